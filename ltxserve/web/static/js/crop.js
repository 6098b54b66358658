// The output size and the centre crop the server will make, for the image preview.
// Mirrors ltxserve/engine/plan.py (RESOLUTIONS, output_size) and media.py (center_crop_to_aspect);
// tests/web/test_crop_rule.py checks both against the Python in a browser.

export const RESOLUTIONS = {
  "720p": { "16:9": [1280, 720], "9:16": [720, 1280], "1:1": [720, 720] },
  "480p": { "16:9": [848, 480], "9:16": [480, 848], "1:1": [480, 480] },
};

// [width, height, aspect]: 'auto' picks the aspect nearest the image's on a log scale, ties going to 1:1.
export function outputSize(resolution, aspectRatio, imageWidth, imageHeight) {
  const table = RESOLUTIONS[resolution];
  if (!table) return null;
  if (aspectRatio !== "auto") {
    const size = table[aspectRatio];
    return size ? [size[0], size[1], aspectRatio] : null;
  }
  const target = Math.log(imageWidth / imageHeight);
  let best = null;
  let bestDistance = Infinity;
  for (const aspect of ["1:1", "16:9", "9:16"]) {
    const [w, h] = table[aspect];
    const distance = Math.abs(Math.log(w / h) - target);
    if (distance < bestDistance) { best = aspect; bestDistance = distance; }  // strict: the first wins ties
  }
  return [table[best][0], table[best][1], best];
}

// {x, y, w, h} of the centre crop of an image to the output's aspect, at the image's resolution.
export function centreCrop(imageWidth, imageHeight, outWidth, outHeight) {
  const target = outWidth / outHeight;
  if (imageWidth / imageHeight > target) {
    const w = Math.trunc(imageHeight * target);
    return { x: Math.trunc((imageWidth - w) / 2), y: 0, w, h: imageHeight };
  }
  const h = Math.trunc(imageWidth / target);
  return { x: 0, y: Math.trunc((imageHeight - h) / 2), w: imageWidth, h };
}
