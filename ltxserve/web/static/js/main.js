// The playground page: builds the form from /openapi.json, submits to the queue, follows the status stream,
// shows the result and keeps a history. Each part lives in its own module; this one wires them together.

import { auth, followStatus, request, requestPaths } from "./api.js";
import { RequestForm } from "./form.js";
import { History } from "./history.js";
import { renderResult } from "./result.js";
import { submitEndpoints } from "./schema.js";
import { StatusView } from "./status.js";

const $ = (selector) => document.querySelector(selector);

const page = {
  endpoints: [],
  endpoint: null,
  form: null,
  current: null,      // the request the status and result panels show
  live: new Map(),    // request id -> {doc, startedAt} for the requests being followed
  keyWaiters: [],     // resolved when a key is entered (Enter or Done in the key field)
  keyRequired: false,
};

function showFormError(message) {
  const box = $("#form-error");
  box.textContent = message || "";
  box.hidden = !message;
}

function setupAuth() {
  const input = $("#api-key");
  const summary = $("#auth summary");
  const mark = () => { summary.textContent = auth.key ? "API key ✓" : "API key"; };
  input.value = auth.key;
  mark();
  input.addEventListener("input", () => {
    auth.key = input.value.trim();
    mark();
    $("#api-key-error").hidden = true;
    input.removeAttribute("aria-invalid");
  });
  auth.onRequired = (message) => {
    page.keyRequired = true;
    const error = $("#api-key-error");
    error.textContent = auth.key ? `That key was refused: ${message}` : `This server requires an API key (${message}).`;
    error.hidden = false;
    input.setAttribute("aria-invalid", "true");
    $("#auth").open = true;
    input.focus();
  };
  const close = () => {
    $("#auth").open = false;
    summary.focus();
    for (const resolve of page.keyWaiters.splice(0)) resolve();
  };
  $("#auth-form").addEventListener("submit", (event) => { event.preventDefault(); close(); });  // Enter in the field
  $("#auth-done").addEventListener("click", close);
}

function keyEntered() {
  return new Promise((resolve) => page.keyWaiters.push(resolve));
}

function chooseEndpoint(id) {
  page.endpoint = page.endpoints.find((e) => e.id === id) || page.endpoints[0];
  $("#endpoint").value = page.endpoint.id;
  $("#endpoint-summary").textContent = page.endpoint.summary;
  page.form = new RequestForm($("#fields"), page.endpoint);
  const url = new URL(location.href);
  if (page.endpoints.length > 1) {
    url.searchParams.set("endpoint", page.endpoint.id);
    history.replaceState(null, "", url);
  }
}

async function submit(endpointId, input, { fromForm }) {
  showFormError("");
  if (fromForm) page.form.clearErrors();
  let submitted;
  try {
    submitted = await request("POST", `queue/${endpointId}`, { json: input });
  } catch (err) {
    if (err.status === 422 && Array.isArray(err.body?.detail)) {
      const unplaced = fromForm && page.endpoint.id === endpointId ? page.form.showErrors(err.body.detail)
        : err.body.detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`);
      if (unplaced.length) showFormError(unplaced.join(" "));
    } else if (err.status === 401) {
      showFormError("Enter the server's API key (top right), then submit again.");
    } else {
      showFormError(`Submit failed: ${err.message}`);
    }
    return;
  }
  const id = submitted.request_id;
  page.history.add({ id, endpoint: endpointId, input, at: Date.now(), state: "queued" });
  track(id, endpointId, input);
}

// Follows a request to its end, updating the history; the panels show it when it is the current one.
async function track(id, endpointId, input, { show = true } = {}) {
  page.live.set(id, { doc: null, startedAt: performance.now(), endpointId });
  if (show) showLive(id);
  let running = false;
  let last = null;
  try {
    last = await followStatus(endpointId, id, (doc) => {
      page.live.get(id).doc = doc;
      if (page.current === id) page.status.update(doc);
      if (doc.status === "IN_PROGRESS" && !running) {
        running = true;
        page.history.update(id, { state: "running" });
      }
    });
  } catch (err) {
    last = { status: "COMPLETED", error: err.message, error_type: "status_unavailable" };
  }
  page.live.delete(id);
  if (!last || last.status !== "COMPLETED") {
    last = { error: "The status stream ended early", error_type: "status_unavailable" };
  }
  const shown = () => page.current === id;

  if (last.error) {
    const cancelled = last.error_type === "request_cancelled";
    page.history.update(id, { state: cancelled ? "cancelled" : "failed", error: last.error });
    if (shown()) page.status.finish({ ok: false, cancelled, message: last.error });
    // Input problems found while running (unreadable image, unsupported option) carry field locations.
    if (last.error_type === "validation_error" && shown()) {
      try {
        await request("GET", requestPaths(endpointId, id).result);
      } catch (err) {
        const detail = err.body?.detail;
        if (Array.isArray(detail) && page.endpoint.id === endpointId) {
          const unplaced = page.form.showErrors(detail);
          if (unplaced.length) showFormError(unplaced.join(" "));
        }
      }
    } else if (!cancelled && shown()) {
      showFormError(`Request failed (${last.error_type || "error"}): ${last.error}`);
    }
    return;
  }
  let output;
  try {
    output = await request("GET", requestPaths(endpointId, id).result);
  } catch (err) {
    if (shown()) page.status.finish({ ok: false, message: err.message });
    page.history.update(id, { state: "failed", error: err.message });
    return;
  }
  page.history.update(id, { state: "done", output });
  if (shown()) {
    page.status.finish({ ok: true, inferenceTime: last.metrics?.inference_time });
    showResult(endpointId, input, output, id);
  }
}

// The status panel takes over a request being followed (a new submission, or one picked in the history).
function showLive(id) {
  const live = page.live.get(id);
  page.current = id;
  $("#result").hidden = true;
  $("#result").replaceChildren();
  page.status.start(id, live.endpointId, live.startedAt);
  if (live.doc) page.status.update(live.doc);
  $("#status").scrollIntoView({ block: "nearest" });  // on a narrow screen the status is below the form
}

function showResult(endpointId, input, output, requestId) {
  $("#result").dataset.requestId = requestId;
  renderResult($("#result"), {
    output, input, endpointId,
    withKey: page.keyRequired || Boolean(auth.key),
    expandPrompt: Boolean(input.expand_prompt),
  });
}

function setupForm() {
  const formEl = $("#request-form");
  const button = formEl.querySelector("button[type=submit]");
  formEl.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true;
    try {
      try {
        await page.form.image?.ready();
      } catch (err) {
        const loc = ["body", page.form.image.field.name];
        page.form.showErrors([{ loc, msg: `Image upload failed: ${err.message}` }]);
        return;
      }
      if (!formEl.reportValidity()) return;
      await submit(page.endpoint.id, page.form.values(), { fromForm: true });
    } finally {
      button.disabled = false;
    }
  });
  formEl.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      formEl.requestSubmit();
    }
  });
  $("#reset").addEventListener("click", () => page.form.fill({}));
  $("#endpoint").addEventListener("change", (event) => chooseEndpoint(event.target.value));
  document.addEventListener("paste", (event) => page.form?.image?.handlePaste(event));
}

function editEntry(entry) {
  if (entry.endpoint !== page.endpoint.id && page.endpoints.some((e) => e.id === entry.endpoint)) {
    chooseEndpoint(entry.endpoint);
  }
  page.form.fill(entry.input || {});
  $("#request-form").scrollIntoView({ behavior: "smooth", block: "start" });
  $("#request-form").querySelector("textarea, input:not([type=file]), select")?.focus({ preventScroll: true });
}

async function init() {
  setupAuth();
  page.status = new StatusView($("#status"), {
    onCancel: (id) => {
      const entry = page.history.get(id);
      return request("PUT", requestPaths(entry?.endpoint || page.endpoint.id, id).cancel);
    },
  });
  page.history = new History($("#history"), {
    onShow: (entry) => {
      if (page.live.has(entry.id)) {
        showLive(entry.id);
        return;
      }
      if (entry.state !== "done") {  // under way but not followed by this page (another tab): follow it now
        track(entry.id, entry.endpoint, entry.input);
        return;
      }
      page.current = entry.id;
      $("#status").hidden = true;
      showResult(entry.endpoint, entry.input, entry.output, entry.id);
    },
    onRerun: (entry) => submit(entry.endpoint, entry.input, { fromForm: false }),
    onEdit: editEntry,
  });
  // Requests still under way when the page was last closed: follow them again in the background.
  for (const entry of page.history.entries.filter((e) => e.state === "queued" || e.state === "running").slice(0, 5)) {
    track(entry.id, entry.endpoint, entry.input, { show: false });
  }
  let openapi;
  for (;;) {
    try {
      openapi = await request("GET", "openapi.json");
      break;
    } catch (err) {
      $("#fields").textContent = `Could not read the server's OpenAPI document: ${err.message}`;
      if (err.status !== 401) return;
      await keyEntered();  // a server that guards its schema too: try again with the key
    }
  }
  page.endpoints = submitEndpoints(openapi);
  if (!page.endpoints.length) {
    $("#fields").textContent = "This server publishes no submit endpoint.";
    return;
  }
  const select = $("#endpoint");
  for (const e of page.endpoints) select.append(new Option(e.id, e.id));
  select.disabled = page.endpoints.length === 1;
  setupForm();
  chooseEndpoint(new URL(location.href).searchParams.get("endpoint"));
  document.body.dataset.ready = "true";  // for tests and scripts: the form is built
}

init();
