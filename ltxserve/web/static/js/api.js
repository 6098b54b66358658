// Talking to this server: relative URLs (the page is served by it), the API key, and the status stream.

const KEY_STORAGE = "ltxserve.apiKey";

export class ApiError extends Error {
  constructor(status, body) {
    super(typeof body?.detail === "string" ? body.detail : `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

export const auth = {
  get key() { return sessionStorage.getItem(KEY_STORAGE) || ""; },
  set key(value) {
    if (value) sessionStorage.setItem(KEY_STORAGE, value);
    else sessionStorage.removeItem(KEY_STORAGE);
  },
  onRequired: () => {},  // set by the page: called with the server's message on a 401
};

function headers(extra = {}) {
  const h = { ...extra };
  if (auth.key) h.authorization = `Key ${auth.key}`;
  return h;
}

async function readBody(response) {
  const text = await response.text();
  try { return text ? JSON.parse(text) : null; } catch { return { detail: text }; }
}

export async function request(method, url, { json, body, headers: extra } = {}) {
  const init = { method, headers: headers(extra) };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["content-type"] = "application/json";
  } else if (body !== undefined) {
    init.body = body;
  }
  const response = await fetch(url, init);
  const data = await readBody(response);
  if (response.status === 401) auth.onRequired(data?.detail || "This server requires an API key.");
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

// URLs the server hands out carry its configured base URL; when that names a loopback host the browser may not
// share (the server bound 0.0.0.0 without --public-url), fetch the same path from the page's own origin instead.
export function reachable(url) {
  try {
    const u = new URL(url, location.href);
    const loopback = ["127.0.0.1", "localhost", "[::1]"].includes(u.hostname);
    if (loopback && u.origin !== location.origin && !["127.0.0.1", "localhost", "[::1]"].includes(location.hostname)) {
      return location.origin + u.pathname + u.search;
    }
    return u.href;
  } catch {
    return url;
  }
}

export function requestPaths(endpointId, requestId) {
  const [owner, app] = endpointId.split("/");
  const base = `queue/${owner}/${app}/requests/${requestId}`;
  return { result: base, status: `${base}/status`, stream: `${base}/status/stream?logs=1`, cancel: `${base}/cancel` };
}

// The status stream read with fetch (EventSource cannot send Authorization): calls onEvent for every status
// document and returns the last one, reconnecting when the connection drops before COMPLETED.
export async function followStatus(endpointId, requestId, onEvent, { signal } = {}) {
  const paths = requestPaths(endpointId, requestId);
  let last = null;
  for (let attempt = 0; attempt < 50 && !signal?.aborted; attempt++) {
    try {
      const response = await fetch(paths.stream, { headers: headers({ accept: "text/event-stream" }), signal });
      if (response.status === 401) auth.onRequired((await readBody(response))?.detail);
      if (!response.ok) throw new ApiError(response.status, await readBody(response));
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
          if (!data) continue;  // keep-alive comment
          last = JSON.parse(data);
          onEvent(last);
          if (last.status === "COMPLETED") return last;
        }
      }
    } catch (err) {
      if (signal?.aborted) break;
      if (err instanceof ApiError && err.status !== 503) throw err;
    }
    await new Promise((r) => setTimeout(r, Math.min(200 * 2 ** attempt, 3000)));
  }
  return last;
}
