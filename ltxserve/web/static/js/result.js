// The result of a request: its files (a playing <video> for video), the other output values (seed, prompt
// used...), and the same request as code.

import { reachable } from "./api.js";
import { formatBytes, h } from "./dom.js";
import { snippets } from "./snippets.js";

function isFile(value) {
  return value && typeof value === "object" && typeof value.url === "string";
}

function fileView(name, file) {
  const url = reachable(file.url);
  const type = file.content_type || "";
  let media = null;
  if (type.startsWith("video/") || /\.(mp4|webm|mov)$/i.test(file.file_name || file.url)) {
    media = h("video", { controls: true, muted: true, loop: true, playsinline: true, "aria-label": `Output ${name}` });
    // muted before the source, then an explicit play(): the autoplay attribute alone does not start every browser
    media.muted = true;
    media.src = url;
    media.addEventListener("canplay", () => media.play().catch(() => {}), { once: true });
  } else if (type.startsWith("image/")) {
    media = h("img", { src: url, alt: `Output ${name}` });
  }
  // only web URLs become links (an output is data, never a javascript: URL to click)
  const download = /^https?:/i.test(url)
    ? h("a", { href: url, download: file.file_name || "", class: "button download" },
      `Download ${file.file_name || name}`, file.file_size ? ` (${formatBytes(file.file_size)})` : "")
    : null;
  return h("div", { class: "output-file", "data-output": name }, media, download);
}

async function copy(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // no clipboard API (plain http on a remote host): select the text for Ctrl+C instead
    const pre = button.closest(".snippet").querySelector("pre");
    getSelection().selectAllChildren(pre);
    button.textContent = "Selected: press Ctrl+C";
    return;
  }
  button.textContent = "Copied";
  setTimeout(() => { button.textContent = "Copy"; }, 1500);
}

export function codeView({ origin, endpointId, input, withKey }) {
  const code = snippets({ origin, endpointId, input, withKey });
  const tabs = [["curl", "curl"], ["python", "Python (fal-client)"], ["js", "JavaScript (@fal-ai/client)"]];
  return h("details", { class: "code" }, h("summary", {}, "Copy as code"),
    ...tabs.map(([key, title]) => {
      const copyButton = h("button", { type: "button", class: "copy", "aria-label": `Copy ${title}` }, "Copy");
      copyButton.addEventListener("click", () => copy(code[key], copyButton));
      return h("div", { class: "snippet", "data-lang": key },
        h("div", { class: "snippet-head" }, h("span", {}, title), copyButton),
        h("pre", { tabindex: 0 }, h("code", {}, code[key])));
    }));
}

export function renderResult(root, { output, input, endpointId, withKey, expandPrompt }) {
  const files = [];
  const values = [];
  for (const [name, value] of Object.entries(output || {})) {
    if (isFile(value)) files.push(fileView(name, value));
    else values.push([name, value]);
  }
  const list = h("dl", { class: "values" });
  for (const [name, value] of values) {
    let label = name;
    if (name === "prompt") label = expandPrompt && value !== input.prompt ? "prompt (expanded)" : "prompt used";
    if (name === "seed") label = "seed used";
    list.append(h("dt", {}, label),
      h("dd", { "data-value": name }, typeof value === "object" ? JSON.stringify(value) : String(value)));
  }
  root.replaceChildren(h("h2", {}, "Result"), ...files, list,
    codeView({ origin: new URL(".", location.href).href.replace(/\/$/, ""), endpointId, input, withKey }));
  root.hidden = false;
}
