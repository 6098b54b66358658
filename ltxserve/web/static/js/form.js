// The request form, generated from the endpoint's input schema: one control per field, named as the field.
// values() gives the request body (fields left at their default are omitted, as a client would), fill() loads
// one back, showErrors() puts 422 details next to the fields they concern.

import { centreCrop, outputSize } from "./crop.js";
import { h } from "./dom.js";
import { ImageField } from "./image.js";
import { describeFields } from "./schema.js";

const RANK = { image: 0, select: 1, number: 1, text: 1, checkbox: 2, textarea: 3, json: 3, rows: 4 };

function helpText(field) {
  const parts = [];
  if (field.description) parts.push(field.description);
  if (field.hasDefault && field.default !== null && typeof field.default !== "object" && field.widget !== "textarea") {
    parts.push(`Default: ${field.default}.`);
  }
  if (field.minimum !== undefined && field.maximum !== undefined && field.maximum < 1e15) {
    parts.push(`Range ${field.minimum}–${field.maximum}.`);
  }
  return parts.join(" ");
}

function controlFor(field, id, describedBy) {
  const required = field.required && field.widget !== "checkbox";
  const common = { id, name: field.name, "aria-describedby": describedBy, required };
  switch (field.widget) {
    case "select": {
      const select = h("select", common);
      if (field.nullable || !field.hasDefault) select.append(h("option", { value: "" }, "—"));
      for (const value of field.enum) select.append(h("option", { value }, String(value)));
      return select;
    }
    case "checkbox":
      return h("input", { ...common, type: "checkbox" });
    case "number":
      return h("input", {
        ...common, type: "number", inputmode: field.type === "integer" ? "numeric" : "decimal",
        step: field.type === "integer" ? "1" : "any", min: field.minimum,
        max: field.maximum !== undefined && field.maximum < 1e15 ? field.maximum : undefined,
        placeholder: field.nullable ? "not set" : undefined,
      });
    case "textarea":
      return h("textarea", { ...common, rows: field.name === "prompt" ? 4 : 2, maxlength: field.maxLength });
    case "json":
      return h("textarea", { ...common, rows: 2, class: "mono", placeholder: "JSON" });
    default:
      return h("input", { ...common, type: "text", maxlength: field.maxLength, autocomplete: "off" });
  }
}

function readControl(field, control) {
  if (field.widget === "checkbox") return control.checked;
  const raw = control.value;
  if (field.widget === "number") {
    if (raw.trim() === "") return undefined;
    const n = Number(raw);
    return Number.isNaN(n) ? raw : n;
  }
  if (field.widget === "select" && raw === "") return undefined;
  if (field.widget === "json") {
    if (raw.trim() === "") return undefined;
    try { return JSON.parse(raw); } catch { return raw; }  // sent as text: the server's 422 says what is wrong
  }
  return raw === "" ? undefined : raw;
}

function writeControl(field, control, value) {
  if (field.widget === "checkbox") control.checked = Boolean(value);
  else if (field.widget === "json") control.value = value === undefined || value === null ? "" : JSON.stringify(value);
  else control.value = value === undefined || value === null ? "" : String(value);
}

function isDefault(field, value) {
  if (!field.hasDefault) return false;
  return JSON.stringify(value) === JSON.stringify(field.default);
}

export class RequestForm {
  constructor(container, endpoint) {
    this.container = container;
    this.endpoint = endpoint;
    this.fields = describeFields(endpoint.openapi, endpoint.schema);
    this.controls = new Map();   // name -> control element (not for rows)
    this.errorSlots = new Map(); // "loras.0.path" style path -> error element
    this.rowLists = new Map();   // rows field name -> {field, list, add}
    this.image = null;
    this.render();
  }

  render() {
    const main = h("div", { class: "grid" });
    const advanced = h("div", { class: "grid" });
    const order = [...this.fields].sort((a, b) =>
      (a.required ? 0 : 1) - (b.required ? 0 : 1) || RANK[a.widget] - RANK[b.widget]);
    for (const field of order) (field.group === "advanced" ? advanced : main).append(this.renderField(field));
    this.container.replaceChildren(main);
    if (advanced.children.length) {
      const count = advanced.children.length;
      this.container.append(h("details", { class: "advanced" },
        h("summary", {}, `Advanced (${count} fields: two-pass steps and more)`), advanced));
    }
    this.fill({});
  }

  errorSlot(path) {
    const slot = h("p", { class: "field-error", id: `e-${path.replace(/\W/g, "-")}`, hidden: true });
    this.errorSlots.set(path, slot);
    return slot;
  }

  renderField(field) {
    const id = `f-${field.name}`;
    const ids = { control: id, help: `${id}-help`, error: `e-${field.name.replace(/\W/g, "-")}` };
    const help = h("small", { class: "help", id: ids.help }, helpText(field));
    const error = this.errorSlot(field.name);
    // the star and the field's wire name are for the eye: the control's name stays "Prompt", "Num frames"...
    const label = h("label", { for: id }, field.label,
      field.required ? h("span", { class: "req", title: "required", "aria-hidden": "true" }, " *") : null,
      " ", h("code", { "aria-hidden": "true" }, field.name));
    const wide = ["textarea", "json", "rows", "image"].includes(field.widget);
    const box = h("div", { class: `field ${field.widget}${wide ? " wide" : ""}`, "data-field": field.name });

    if (field.widget === "image") {
      this.image = new ImageField(field, { ids, onImageChange: () => this.updateCrop() });
      this.controls.set(field.name, this.image.urlInput);
      box.append(label, this.image.dropzone, this.image.urlInput, this.image.preview, help, error);
      return box;
    }
    if (field.widget === "rows") return this.renderRows(field, ids, help, error);

    const control = controlFor(field, id, `${ids.help} ${ids.error}`);
    this.controls.set(field.name, control);
    if (["resolution", "aspect_ratio", "width", "height"].includes(field.name)) {
      control.addEventListener("input", () => this.updateCrop());
    }
    if (field.widget === "checkbox") box.append(h("div", { class: "check" }, control, label), help, error);
    else box.append(label, control, help, error);
    return box;
  }

  renderRows(field, ids, help, error) {
    const singular = field.label.replace(/s$/, "");
    const list = h("div", { class: "row-list" });
    const onclick = () => { this.addRow(field); this.focusLastRow(field); };
    const add = h("button", { type: "button", class: "add", onclick }, `+ Add ${singular}`);
    const box = h("fieldset",
      { class: "field rows wide", "data-field": field.name, "aria-describedby": `${ids.help} ${ids.error}` },
      h("legend", {}, field.label, " ", h("code", {}, field.name)), help, list, add, error);
    this.rowLists.set(field.name, { field, list, add, singular });
    return box;
  }

  addRow(field, value = {}) {
    const { list, add, singular } = this.rowLists.get(field.name);
    const row = h("div", { class: "row" });
    const controls = new Map();
    for (const sub of field.items) {
      const index = list.children.length;
      const path = `${field.name}.${index}.${sub.name}`;
      const id = `f-${path.replace(/\W/g, "-")}`;
      const error = this.errorSlot(path);
      const control = controlFor({ ...sub, name: path }, id, error.id);
      writeControl(sub, control, value[sub.name] ?? sub.default);
      controls.set(sub.name, control);
      row.append(h("div", { class: `field ${sub.widget}` },
        h("label", { for: id }, sub.label, sub.required ? " *" : ""), control, error));
    }
    row.controls = controls;
    row.append(h("button", {
      type: "button", class: "remove", "aria-label": `Remove ${singular} ${list.children.length + 1}`,
      onclick: () => { row.remove(); this.renumberRows(field); add.focus(); },
    }, "Remove"));
    list.append(row);
    add.disabled = field.maxItems !== undefined && list.children.length >= field.maxItems;
  }

  focusLastRow(field) {
    const { list } = this.rowLists.get(field.name);
    list.lastElementChild?.querySelector("input, select, textarea")?.focus();
  }

  // Names, ids and error slots follow the row's position, as the server's error locations do.
  renumberRows(field) {
    const values = this.readRows(field);
    const { list } = this.rowLists.get(field.name);
    list.replaceChildren();
    for (const key of [...this.errorSlots.keys()]) if (key.startsWith(`${field.name}.`)) this.errorSlots.delete(key);
    for (const v of values) this.addRow(field, v);
  }

  readRows(field) {
    const { list } = this.rowLists.get(field.name);
    const rows = [];
    for (const row of list.children) {
      const item = {};
      for (const sub of field.items) {
        const value = readControl(sub, row.controls.get(sub.name));
        if (value !== undefined && (sub.required || !isDefault(sub, value))) item[sub.name] = value;
      }
      if (Object.keys(item).length) rows.push(item);
    }
    return rows;
  }

  values() {
    const out = {};
    for (const field of this.fields) {
      let value;
      if (field.widget === "rows") {
        value = this.readRows(field);
        if (!value.length && !field.required) value = undefined;
      } else {
        value = readControl(field, this.controls.get(field.name));
      }
      if (value === undefined) continue;
      if (!field.required && isDefault(field, value)) continue;
      out[field.name] = value;
    }
    return out;
  }

  fill(input) {
    for (const field of this.fields) {
      const value = field.name in input ? input[field.name] : field.default;
      if (field.widget === "rows") {
        this.rowLists.get(field.name).list.replaceChildren();
        this.rowLists.get(field.name).add.disabled = false;
        for (const item of value || []) this.addRow(field, item);
      } else if (field.widget === "image") {
        this.image.setValue(value);
      } else {
        writeControl(field, this.controls.get(field.name), value);
      }
    }
    this.clearErrors();
    this.updateCrop();
  }

  // The crop the server will make of the image: explicit width/height, else resolution + aspect_ratio.
  updateCrop() {
    if (!this.image) return;
    const get = (name) => this.controls.get(name)?.value;
    let out = null;
    let how = "";
    const w = Number(get("width"));
    const hgt = Number(get("height"));
    if (w > 0 && hgt > 0) {
      out = [w, hgt];
      how = "width × height";
    } else if (this.image.size && get("resolution") && get("aspect_ratio")) {
      const [iw, ih] = this.image.size;
      const size = outputSize(get("resolution"), get("aspect_ratio"), iw, ih);
      if (size) {
        out = [size[0], size[1]];
        how = get("aspect_ratio") === "auto" ? `${size[2]}, chosen by aspect_ratio auto` : size[2];
      }
    }
    if (!this.image.size) return;
    if (!out) { this.image.showCrop(null, ""); return; }
    const [iw, ih] = this.image.size;
    const crop = centreCrop(iw, ih, out[0], out[1]);
    this.image.showCrop(crop,
      `Output ${out[0]}×${out[1]} (${how}): the dashed box, ${crop.w}×${crop.h} of this ${iw}×${ih} image, `
      + "is what the video starts from.");
  }

  clearErrors() {
    for (const slot of this.errorSlots.values()) { slot.hidden = true; slot.textContent = ""; }
    for (const el of this.container.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  }

  // 422 details -> messages next to their fields; returns the ones that belong to no field.
  showErrors(detail) {
    const unplaced = [];
    const names = this.fields.map((f) => f.name);
    for (const item of Array.isArray(detail) ? detail : []) {
      const loc = (item.loc || []).slice(item.loc?.[0] === "body" ? 1 : 0).map(String);
      const msg = String(item.msg || "").replace(/^Value error, /, "");
      let path = null;
      for (let n = loc.length; n > 0 && !path; n--) {
        const prefix = loc.slice(0, n).join(".");  // ["loras", 0, "path"], else ["loras"]
        if (this.errorSlots.has(prefix)) path = prefix;
      }
      if (!path) {
        // whole-body errors (a check across fields) name the field in the message: the first one named
        const named = names.map((name) => [msg.search(new RegExp(`\\b${name}\\b`)), name]).filter(([i]) => i >= 0);
        named.sort((a, b) => a[0] - b[0]);
        if (named.length) path = named[0][1];
      }
      if (!path) { unplaced.push(msg || JSON.stringify(item)); continue; }
      const slot = this.errorSlots.get(path);
      slot.textContent = slot.textContent ? `${slot.textContent} ${msg}` : msg;
      slot.hidden = false;
      const control = this.container.querySelector(`[name="${CSS.escape(path)}"]`);
      if (control) control.setAttribute("aria-invalid", "true");
      const details = slot.closest("details");
      if (details) details.open = true;
    }
    const first = [...this.errorSlots.values()].find((s) => !s.hidden);
    first?.closest(".field")?.querySelector("input, select, textarea")?.focus();
    return unplaced;
  }
}
