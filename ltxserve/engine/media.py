"""Media at the engine's edges: fetching the input image, preparing it as the reference does, writing the mp4."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterable

import av
import imageio_ffmpeg
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from ltxserve.config import Settings
from ltxserve.engine.contract import InputError
from ltxserve.engine.net import FetchError, fetch_bytes

# The pixel limit is ours (settings.max_image_pixels), checked from the header before anything is decoded.
Image.MAX_IMAGE_PIXELS = None

MIN_IMAGE_SIDE = 8  # smaller sides cannot be cropped, blurred and compressed into a conditioning frame


def fetch_image(url: str, settings: Settings, *, field: str = "image_url") -> Image.Image:
    """The image behind an http(s) URL or a data: URI, as RGB; fal's typed 422 otherwise.

    The size is read from the header and checked before decoding, so memory is bounded by the pixel limit (about
    4 bytes per pixel while decoding); images are reduced before any float conversion (prepare_conditioning_image).
    """
    loc = ("body", field)
    try:
        data = fetch_bytes(url, settings)
    except FetchError as exc:
        raise InputError(f"Could not fetch {field}: {exc}", loc=loc, type=exc.kind) from None
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise InputError(f"{field} is not a readable image", loc=loc, type="image_load_error") from None
    limit = settings.max_image_pixels
    if width * height > limit:
        side = int(limit ** 0.5)
        raise InputError(f"{field} is too large: {width}x{height} pixels, the limit is {limit} pixels",
                         loc=loc, type="image_too_large",
                         ctx={"max_pixels": limit, "max_width": side, "max_height": side})
    if min(width, height) < MIN_IMAGE_SIDE:
        raise InputError(f"{field} is too small: {width}x{height} pixels, each side needs at least "
                         f"{MIN_IMAGE_SIDE}", loc=loc, type="image_too_small",
                         ctx={"min_width": MIN_IMAGE_SIDE, "min_height": MIN_IMAGE_SIDE})
    try:
        image.load()
        # As the reference: no EXIF orientation is applied, only a conversion to RGB.
        return image.convert("RGB")
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
        raise InputError(f"{field} is not a readable image", loc=loc, type="image_load_error") from None


def reduction_factor(width: int, height: int, out_width: int, out_height: int) -> int:
    """How much a (cropped) image may be shrunk by integer box reduction and stay at least 1.5x the output's size.

    Each pass resizes the conditioning image to its own resolution, and the second pass works at up to about 1.3x
    the output, so 1.5x loses nothing the model sees. An image less than 3x the output in either dimension is
    never reduced, so the conditioning of ordinary images stays bit-identical to the reference's.
    """
    return max(1, min(width * 2 // (3 * out_width), height * 2 // (3 * out_height)))


# --- conditioning image: crop, blur, CRF, pad (ltx_video/inference.py load_image_to_tensor_with_resize_and_crop) --


def center_crop_to_aspect(image: Image.Image, width: int, height: int) -> Image.Image:
    in_w, in_h = image.size
    target = width / height
    if in_w / in_h > target:
        new_w, new_h = int(in_h * target), in_h
        x0, y0 = (in_w - new_w) // 2, 0
    else:
        new_w, new_h = in_w, int(in_w / target)
        x0, y0 = 0, (in_h - new_h) // 2
    return image.crop((x0, y0, x0 + new_w, y0 + new_h))


def gaussian_blur(image: torch.Tensor, kernel_size: int = 3, sigma: float = 1.0) -> torch.Tensor:
    """torchvision's gaussian_blur on a float (C, H, W) tensor: 2-D kernel, reflect padding."""
    half = (kernel_size - 1) * 0.5
    x = torch.linspace(-half, half, steps=kernel_size)
    pdf = torch.exp(-0.5 * (x / sigma).pow(2))
    k1 = (pdf / pdf.sum()).to(image.dtype)
    k2 = torch.mm(k1[:, None], k1[None, :])
    channels = image.shape[0]
    kernel = k2.expand(channels, 1, kernel_size, kernel_size)
    pad = kernel_size // 2
    padded = F.pad(image[None], [pad, pad, pad, pad], mode="reflect")
    return F.conv2d(padded, kernel, groups=channels)[0]


def crf_compress(image_hwc: torch.Tensor, crf: int) -> torch.Tensor:
    """An H.264 round-trip of one frame (libx264, preset veryfast, yuv420p), so the still looks like a video frame.
    Crops to even sides and truncates to uint8 first, as the reference does."""
    if crf == 0:
        return image_hwc
    h, w = (image_hwc.shape[0] // 2) * 2, (image_hwc.shape[1] // 2) * 2
    array = (image_hwc[:h, :w] * 255.0).byte().cpu().numpy()
    buffer = io.BytesIO()
    container = av.open(buffer, "w", format="mp4")
    try:
        stream = container.add_stream("libx264", rate=1, options={"crf": str(crf), "preset": "veryfast"})
        stream.height, stream.width = h, w
        frame = av.VideoFrame.from_ndarray(array, format="rgb24").reformat(format="yuv420p")
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    finally:
        container.close()
    with av.open(io.BytesIO(buffer.getvalue())) as decoded:
        stream = next(s for s in decoded.streams if s.type == "video")
        out = next(decoded.decode(stream)).to_ndarray(format="rgb24")
    return torch.tensor(out, dtype=image_hwc.dtype) / 255.0


def prepare_conditioning_image(image: Image.Image, width: int, height: int, padding: tuple[int, int, int, int],
                               crf: int) -> torch.Tensor:
    """(1, 3, 1, h, w) in [-1, 1]: centre-cropped to the output's aspect at the source resolution (no resize: each
    pass resizes it), blurred, CRF-compressed, zero-padded by the output's padding. A source at least 3x the output
    in both dimensions is first box-reduced by an integer factor (reduction_factor), which bounds memory."""
    cropped = center_crop_to_aspect(image, width, height)
    if min(cropped.size) < 2:
        raise InputError(f"image_url is too small for a {width}x{height} output once cropped to its aspect",
                         loc=("body", "image_url"), type="image_too_small",
                         ctx={"min_width": MIN_IMAGE_SIDE, "min_height": MIN_IMAGE_SIDE})
    factor = reduction_factor(*cropped.size, width, height)
    if factor > 1:  # a photo far larger than the output: shrink it while it is still 8-bit, before any float
        cropped = cropped.reduce(factor)
    tensor = torch.from_numpy(np.array(cropped, dtype=np.uint8, copy=True)).permute(2, 0, 1).float().div(255)
    tensor = gaussian_blur(tensor, kernel_size=3, sigma=1.0)
    tensor = crf_compress(tensor.permute(1, 2, 0), crf).permute(2, 0, 1) * 255.0
    tensor = (tensor / 127.5 - 1.0)[None, :, None]
    return F.pad(tensor, padding)


# --- output -------------------------------------------------------------------------------------------------------


def write_mp4(frames: Iterable[np.ndarray] | np.ndarray, path: Path, fps: int) -> None:
    """H.264 yuv420p mp4 through imageio-ffmpeg, fed one frame at a time (no second copy of the video)."""
    frames = iter(frames)
    first = next(frames)
    height, width = first.shape[:2]
    writer = imageio_ffmpeg.write_frames(
        str(path), (width, height), fps=fps, codec="libx264", pix_fmt_in="rgb24", pix_fmt_out="yuv420p",
        quality=None, bitrate=None, macro_block_size=1,
        # yuv420p needs even sides: pad by one pixel where a side is odd instead of failing
        output_params=["-crf", "18", "-preset", "medium", "-movflags", "+faststart",
                       "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2"],
        ffmpeg_log_level="error",
    )
    writer.send(None)
    writer.send(np.ascontiguousarray(first))
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
