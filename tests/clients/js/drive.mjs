// Drives the unmodified @fal-ai/client against a live ltxserve through the proxy contract.
// usage: node drive.mjs <scenario> ; env: LTX_BASE (http://127.0.0.1:PORT), FAL_ENDPOINT, FAL_INPUT (JSON)
// Prints one JSON document on stdout for the Python test to assert on.
import { createFalClient } from "@fal-ai/client";

const base = process.env.LTX_BASE;
const endpoint = process.env.FAL_ENDPOINT;
const input = JSON.parse(process.env.FAL_INPUT || "{}");
const fal = createFalClient({
  credentials: process.env.FAL_KEY || "js-test-key",
  proxyUrl: { url: `${base}/api/fal/proxy`, when: "always" },
});

const scenarios = {
  async subscribe_polling() {
    const updates = [];
    let enqueued = null;
    const result = await fal.subscribe(endpoint, {
      input, logs: true, pollInterval: 100,
      onEnqueue: (id) => { enqueued = id; },
      onQueueUpdate: (u) => updates.push({ status: u.status, logs: u.logs ?? null, queue_position: u.queue_position }),
    });
    return { enqueued, requestId: result.requestId, data: result.data, updates };
  },
  async subscribe_streaming() {
    const updates = [];
    const result = await fal.subscribe(endpoint, {
      input, logs: true, mode: "streaming",
      onQueueUpdate: (u) => updates.push({ status: u.status, logs: u.logs ?? null }),
    });
    return { requestId: result.requestId, data: result.data, updates };
  },
  async submit_status_result() {
    const { request_id } = await fal.queue.submit(endpoint, { input });
    const first = await fal.queue.status(endpoint, { requestId: request_id, logs: true });
    const final = await fal.queue.subscribeToStatus(endpoint, { requestId: request_id, logs: true, pollInterval: 100 });
    const result = await fal.queue.result(endpoint, { requestId: request_id });
    return { request_id, first: first.status, final: final.status, finalLogs: final.logs, result };
  },
  async stream_status() {
    const { request_id } = await fal.queue.submit(endpoint, { input });
    const stream = await fal.queue.streamStatus(endpoint, { requestId: request_id, logs: true });
    const events = [];
    stream.on("data", (e) => events.push(e.status));
    const last = await stream.done();
    return { request_id, events, last: last.status };
  },
  async cancel_queued_and_running() {
    const running = await fal.queue.submit(endpoint, { input });
    // wait until it runs
    for (let i = 0; i < 200; i++) {
      const s = await fal.queue.status(endpoint, { requestId: running.request_id });
      if (s.status === "IN_PROGRESS") break;
      await new Promise((r) => setTimeout(r, 50));
    }
    const queued = await fal.queue.submit(endpoint, { input });
    await fal.queue.cancel(endpoint, { requestId: queued.request_id });
    await fal.queue.cancel(endpoint, { requestId: running.request_id });
    const out = {};
    for (const [name, id] of [["queued", queued.request_id], ["running", running.request_id]]) {
      const s = await fal.queue.subscribeToStatus(endpoint, { requestId: id, pollInterval: 100 });
      let error = null;
      try { await fal.queue.result(endpoint, { requestId: id }); } catch (e) { error = { status: e.status, body: e.body }; }
      out[name] = { status: s.status, error };
    }
    return out;
  },
  async run() {
    const result = await fal.run(endpoint, { input });
    return { requestId: result.requestId, data: result.data };
  },
  async upload_and_use() {
    const png = Buffer.from(process.env.FAL_BLOB_PNG_B64, "base64");  // made by the test with Pillow
    const blob = new Blob([png], { type: "image/png" });
    const { data } = await fal.subscribe(endpoint, { input: { ...input, image_url: blob }, pollInterval: 100 });
    return { data };
  },
  async validation_error() {
    try {
      await fal.queue.submit(endpoint, { input });
      return { raised: false };
    } catch (e) {
      return { raised: true, name: e.constructor.name, status: e.status, body: e.body };
    }
  },
};

const name = process.argv[2];
try {
  const out = await scenarios[name]();
  process.stdout.write(JSON.stringify(out));
} catch (e) {
  process.stdout.write(JSON.stringify({ thrown: String(e), status: e.status, body: e.body }));
  process.exit(1);
}
