// The live status of one request: queue position, a progress bar per pass (from the "pass N step k/n" log lines
// the engine writes), the logs, the elapsed time, and a cancel button.

import { h } from "./dom.js";

const STEP_LINE = /^(.+?) step (\d+)\/(\d+)$/;

export function passesFromLogs(logs) {
  const passes = new Map();
  for (const entry of logs || []) {
    const m = STEP_LINE.exec(entry.message || "");
    if (m) passes.set(m[1], { step: Number(m[2]), total: Number(m[3]) });
  }
  return passes;
}

export class StatusView {
  constructor(root, { onCancel }) {
    this.root = root;
    this.onCancel = onCancel;
    this.timer = null;
  }

  start(requestId, label, startedAt = performance.now()) {
    this.requestId = requestId;
    this.startedAt = startedAt;
    this.state = h("p", { class: "state", role: "status", "data-state": "IN_QUEUE" }, "Submitted");
    this.elapsed = h("span", { class: "elapsed" }, "0.0 s");
    this.cancelButton = h("button", { type: "button", class: "cancel", onclick: () => this.cancel() }, "Cancel");
    this.bars = h("div", { class: "passes" });
    this.logs = h("ol", { class: "logs", "aria-label": "Logs" });
    this.root.replaceChildren(
      h("div", { class: "status-head" }, this.state, this.elapsed, this.cancelButton),
      h("p", { class: "request-id" }, label, " · request ", h("code", {}, requestId)),
      this.bars,
      h("details", { class: "log-box", open: true }, h("summary", {}, "Logs"), this.logs));
    this.root.hidden = false;
    clearInterval(this.timer);
    this.timer = setInterval(() => this.tick(), 100);
  }

  tick() {
    this.elapsed.textContent = `${((performance.now() - this.startedAt) / 1000).toFixed(1)} s`;
  }

  async cancel() {
    this.cancelButton.disabled = true;
    this.cancelButton.textContent = "Cancelling…";
    try {
      await this.onCancel(this.requestId);
    } catch (err) {
      this.cancelButton.textContent = "Cancel";
      this.cancelButton.disabled = false;
      this.setState("ERROR", `Cancel failed: ${err.message}`);
    }
  }

  setState(code, text) {
    this.state.dataset.state = code;
    this.state.textContent = text;
  }

  update(doc) {
    if (doc.status === "IN_QUEUE") {
      const ahead = doc.queue_position ?? 0;
      this.setState("IN_QUEUE", ahead === 0 ? "In queue: next to run" : `In queue: ${ahead} ahead`);
    } else if (doc.status === "IN_PROGRESS") {
      this.setState("IN_PROGRESS", "Running");
    }
    if (doc.logs) this.showLogs(doc.logs);
  }

  showLogs(logs) {
    const passes = passesFromLogs(logs);
    this.bars.replaceChildren(...[...passes].map(([name, { step, total }]) => {
      const id = `bar-${name.replace(/\W/g, "-")}`;
      return h("div", { class: "pass", "data-pass": name },
        h("label", { for: id }, name.charAt(0).toUpperCase() + name.slice(1)),
        h("progress", { id, max: total, value: step }),
        h("span", { class: "steps" }, `${step}/${total} steps`));
    }));
    const lines = logs.filter((l) => !STEP_LINE.test(l.message || ""));
    this.logs.replaceChildren(...lines.map((l) => h("li", { class: `log-${(l.level || "INFO").toLowerCase()}` },
      h("span", { class: "level" }, l.level || "INFO"), " ", l.message)));
  }

  // final: {ok, cancelled, message, inferenceTime}
  finish({ ok, cancelled, message, inferenceTime }) {
    clearInterval(this.timer);
    this.tick();
    this.cancelButton.disabled = true;
    this.cancelButton.textContent = "Cancel";
    const time = inferenceTime ? ` (inference ${inferenceTime.toFixed(1)} s)` : "";
    if (ok) this.setState("DONE", `Done${time}`);
    else if (cancelled) this.setState("CANCELLED", "Cancelled");
    else this.setState("ERROR", `Failed: ${message}`);
  }
}
