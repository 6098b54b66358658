// The image input: a file picked, dropped or pasted is uploaded through the storage routes (initiate, then PUT)
// and its file URL becomes the field's value; a URL can be typed instead. A preview shows the crop to come.

import { reachable, request } from "./api.js";
import { formatBytes, h } from "./dom.js";

export async function uploadFile(file) {
  const contentType = file.type || "application/octet-stream";
  const { upload_url: uploadUrl, file_url: fileUrl } = await request("POST", "storage/upload/initiate",
    { json: { content_type: contentType, file_name: file.name || "image" } });
  await request("PUT", reachable(uploadUrl), { body: file, headers: { "content-type": contentType } });
  return fileUrl;
}

export class ImageField {
  constructor(field, { ids, onImageChange }) {
    this.field = field;
    this.onImageChange = onImageChange;
    this.size = null;          // natural [width, height] of the previewed image
    this.pendingFile = null;   // picked but not uploaded yet (e.g. the upload met a 401)
    this.upload = null;        // the upload under way
    this.objectUrl = null;

    this.urlInput = h("input", {
      id: ids.control, name: field.name, type: "text", inputmode: "url", autocomplete: "off", spellcheck: "false",
      required: field.required, placeholder: "https://… or choose / drop / paste an image",
      "aria-describedby": `${ids.help} ${ids.error}`,
      onchange: () => this.useUrl(this.urlInput.value.trim()),
    });
    this.fileInput = h("input", {
      id: `${ids.control}-file`, type: "file", accept: "image/*", class: "visually-hidden",
      onchange: () => this.fileInput.files[0] && this.useFile(this.fileInput.files[0]),
    });
    this.status = h("span", { class: "upload-status", "aria-live": "polite" });
    this.img = h("img", { alt: "Input image", onload: () => this.loaded(), onerror: () => this.failed() });
    this.cropBox = h("div", { class: "crop", hidden: true });
    this.caption = h("p", { class: "crop-caption" });
    this.preview = h("figure", { class: "preview", hidden: true },
      h("div", { class: "frame" }, this.img, this.cropBox), h("figcaption", {}, this.caption));
    this.dropzone = h("div", { class: "dropzone" },
      this.fileInput,
      h("label", { for: this.fileInput.id, class: "button" }, "Choose an image"),
      h("span", { class: "drop-hint" }, " or drop one here, or paste it (Ctrl+V)"),
      this.status);
    for (const type of ["dragenter", "dragover"]) {
      this.dropzone.addEventListener(type, (e) => { e.preventDefault(); this.dropzone.classList.add("dragging"); });
    }
    this.dropzone.addEventListener("dragleave", () => this.dropzone.classList.remove("dragging"));
    this.dropzone.addEventListener("drop", (e) => {
      e.preventDefault();
      this.dropzone.classList.remove("dragging");
      const file = [...(e.dataTransfer?.files || [])].find((f) => f.type.startsWith("image/"));
      if (file) this.useFile(file);
    });
  }

  // Called by the page for paste events anywhere in it.
  handlePaste(event) {
    const file = [...(event.clipboardData?.files || [])].find((f) => f.type.startsWith("image/"));
    if (!file) return false;
    event.preventDefault();
    this.useFile(file);
    return true;
  }

  useFile(file) {
    this.showPreview(URL.createObjectURL(file), true);
    this.pendingFile = file;
    this.urlInput.value = "";
    this.startUpload();
  }

  startUpload() {
    const file = this.pendingFile;
    if (!file) return Promise.resolve();
    this.setStatus(`Uploading ${file.name}…`);
    this.upload = uploadFile(file).then((url) => {
      if (this.pendingFile !== file) return;  // another image was picked meanwhile
      this.pendingFile = null;
      this.urlInput.value = url;
      this.setStatus(`Uploaded ${file.name} (${formatBytes(file.size)})`);
    }).catch((err) => {
      this.setStatus(`Upload failed: ${err.message}`, true);
      throw err;
    }).finally(() => { this.upload = null; });
    this.upload.catch(() => {});  // reported in the status line; submit() retries
    return this.upload;
  }

  // Before submitting: the upload under way, or a retry of one that failed.
  async ready() {
    if (this.upload) await this.upload;
    else if (this.pendingFile) await this.startUpload();
  }

  useUrl(url) {
    this.pendingFile = null;
    this.setStatus("");
    if (/^(https?:|data:image\/)/i.test(url)) this.showPreview(url.startsWith("data:") ? url : reachable(url), false);
    else this.hidePreview();
  }

  setValue(url) {
    this.urlInput.value = url || "";
    this.useUrl(this.urlInput.value);
  }

  setStatus(text, isError = false) {
    this.status.textContent = text;
    this.status.classList.toggle("bad", isError);
  }

  showPreview(src, isLocal) {
    if (this.objectUrl && this.objectUrl !== src) URL.revokeObjectURL(this.objectUrl);
    this.objectUrl = isLocal ? src : null;
    this.size = null;
    this.preview.hidden = false;
    this.caption.textContent = "Loading preview…";
    this.img.src = src;
  }

  hidePreview() {
    this.preview.hidden = true;
    this.size = null;
    this.img.removeAttribute("src");
    this.onImageChange();
  }

  loaded() {
    this.size = [this.img.naturalWidth, this.img.naturalHeight];
    this.onImageChange();
  }

  failed() {
    this.size = null;
    this.cropBox.hidden = true;
    this.caption.textContent = "No preview (the server fetches the URL itself).";
  }

  // out: {width, height, how} or null when the output size is unknown
  showCrop(crop, text) {
    if (!crop || !this.size) {
      this.cropBox.hidden = true;
      if (this.size) this.caption.textContent = `${this.size[0]}×${this.size[1]} image. ${text || ""}`;
      return;
    }
    const [w, h] = this.size;
    Object.assign(this.cropBox.style, {
      left: `${(100 * crop.x) / w}%`, top: `${(100 * crop.y) / h}%`,
      width: `${(100 * crop.w) / w}%`, height: `${(100 * crop.h) / h}%`,
    });
    this.cropBox.hidden = false;
    this.caption.textContent = text;
  }
}
