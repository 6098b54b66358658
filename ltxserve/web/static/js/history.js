// Recent requests, kept in this browser (localStorage): what was sent, how it ended, and the outputs' values.

import { h } from "./dom.js";

const KEY = "ltxserve.history.v1";
const MAX_ENTRIES = 30;

export class History {
  constructor(root, { onShow, onRerun, onEdit }) {
    this.root = root;
    this.handlers = { onShow, onRerun, onEdit };
    this.entries = this.load();
    this.render();
  }

  load() {
    try {
      const entries = JSON.parse(localStorage.getItem(KEY) || "[]");
      return Array.isArray(entries) ? entries : [];
    } catch {
      return [];
    }
  }

  save() {
    for (;;) {
      try {
        localStorage.setItem(KEY, JSON.stringify(this.entries));
        return;
      } catch {
        if (this.entries.length <= 1) return;  // over quota even alone (a huge data: URI): keep it in memory only
        this.entries.pop();
      }
    }
  }

  add(entry) {
    this.entries = [entry, ...this.entries.filter((e) => e.id !== entry.id)].slice(0, MAX_ENTRIES);
    this.save();
    this.render();
  }

  update(id, changes) {
    const entry = this.entries.find((e) => e.id === id);
    if (!entry) return;
    Object.assign(entry, changes);
    this.save();
    this.render();
  }

  get(id) {
    return this.entries.find((e) => e.id === id);
  }

  clear() {
    this.entries = [];
    this.save();
    this.render();
  }

  render() {
    const items = this.entries.map((entry) => {
      const title = entry.input?.prompt || entry.input?.text || entry.endpoint;
      const when = new Date(entry.at).toLocaleString();
      return h("li", { class: "history-entry", "data-id": entry.id, "data-state": entry.state },
        h("div", { class: "history-text" },
          h("span", { class: `badge ${entry.state}` }, entry.state),
          h("span", { class: "history-prompt", title }, title),
          h("small", {}, `${when} · ${entry.endpoint}`)),
        h("div", { class: "history-actions" },
          ["done", "queued", "running"].includes(entry.state)
            ? h("button", { type: "button", class: "show", onclick: () => this.handlers.onShow(entry),
                            "aria-label": `Show: ${title}` }, "Show") : null,
          h("button", { type: "button", class: "rerun", onclick: () => this.handlers.onRerun(entry),
                        "aria-label": `Re-run: ${title}` }, "Re-run"),
          h("button", { type: "button", class: "edit", onclick: () => this.handlers.onEdit(entry),
                        "aria-label": `Edit and resubmit: ${title}` }, "Edit")));
    });
    this.root.replaceChildren(
      h("div", { class: "history-head" }, h("h2", {}, "History"),
        this.entries.length
          ? h("button", { type: "button", class: "link", onclick: () => this.clear() }, "Clear") : null),
      items.length ? h("ol", { class: "history-list" }, items)
        : h("p", { class: "muted" }, "Requests you submit from this browser appear here."));
  }
}
