// "Copy as code": the same request for curl, fal-client (Python) and @fal-ai/client (JS), aimed at this server.

function shellQuote(text) {
  return `'${text.replace(/'/g, "'\\''")}'`;
}

// JSON value -> Python literal (True/False/None), indented like json.dumps(indent=4)
export function pythonLiteral(value, indent = 0) {
  const pad = " ".repeat(indent);
  const inner = " ".repeat(indent + 4);
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "number" || typeof value === "string") return JSON.stringify(value);
  if (Array.isArray(value)) {
    if (!value.length) return "[]";
    return `[\n${value.map((v) => inner + pythonLiteral(v, indent + 4)).join(",\n")},\n${pad}]`;
  }
  const entries = Object.entries(value);
  if (!entries.length) return "{}";
  const lines = entries.map(([k, v]) => `${inner}${JSON.stringify(k)}: ${pythonLiteral(v, indent + 4)}`);
  return `{\n${lines.join(",\n")},\n${pad}}`;
}

function indentJson(value, by) {
  return JSON.stringify(value, null, 2).split("\n").join(`\n${" ".repeat(by)}`);
}

export function snippets({ origin, endpointId, input, withKey }) {
  const curl = [
    `curl -sS -X POST ${shellQuote(`${origin}/queue/${endpointId}`)} \\`,
    withKey ? `  -H "Authorization: Key $FAL_KEY" \\` : null,
    `  -H 'Content-Type: application/json' \\`,
    `  -d ${shellQuote(JSON.stringify(input))}`,
    `# answers {request_id, status_url, response_url, cancel_url}; GET status_url until COMPLETED, then response_url`,
  ].filter(Boolean).join("\n");

  const host = origin.replace(/^https?:\/\//, "");
  const python = [
    `# pip install fal-client; the client always speaks https: serve TLS (README, "Point the official clients at it")`,
    `# export FAL_QUEUE_RUN_HOST=${host}/queue FAL_RUN_HOST=${host}/run SSL_CERT_FILE=certs/ca.pem `
      + `FAL_KEY=${withKey ? "<your key>" : "any-string"}`,
    `import fal_client`,
    ``,
    `result = fal_client.subscribe(`,
    `    ${JSON.stringify(endpointId)},`,
    `    arguments=${pythonLiteral(input, 4)},`,
    `    with_logs=True,`,
    `    on_queue_update=print,`,
    `)`,
    `print(result)`,
  ].join("\n");

  const js = [
    `import { createFalClient } from "@fal-ai/client";`,
    ``,
    `const fal = createFalClient({`,
    `  credentials: ${withKey ? "process.env.FAL_KEY" : `"any-string"`},`,
    `  proxyUrl: { url: ${JSON.stringify(`${origin}/api/fal/proxy`)}, when: "always" },`,
    `});`,
    `const { data } = await fal.subscribe(${JSON.stringify(endpointId)}, {`,
    `  input: ${indentJson(input, 2)},`,
    `  logs: true,`,
    `  onQueueUpdate: (update) => console.log(update.status),`,
    `});`,
    `console.log(data);`,
  ].join("\n");

  return { curl, python, js };
}
