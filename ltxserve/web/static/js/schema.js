// Reading the OpenAPI document: which endpoints take submissions, and what their input fields are.
// Everything the form shows comes from here, so the page follows the server's pydantic models.

const QUEUE_PREFIX = "/queue/";

function resolve(openapi, schema) {
  let s = schema || {};
  for (let i = 0; s.$ref && i < 10; i++) {
    const path = s.$ref.replace(/^#\//, "").split("/");
    s = path.reduce((node, key) => (node ? node[key] : undefined), openapi) || {};
  }
  return s;
}

// Submit routes: POST /queue/<endpoint id> with a JSON body (the templated status/result routes are skipped).
export function submitEndpoints(openapi) {
  const endpoints = [];
  for (const [path, item] of Object.entries(openapi.paths || {})) {
    if (!path.startsWith(QUEUE_PREFIX) || path.includes("{") || !item.post) continue;
    const body = item.post.requestBody?.content?.["application/json"]?.schema;
    if (!body) continue;
    endpoints.push({
      id: path.slice(QUEUE_PREFIX.length),
      summary: item.post.description || item.post.summary || "",
      schema: resolve(openapi, body),
      openapi,
    });
  }
  return endpoints;
}

// A nullable field is anyOf [X, {type: null}]: its constraints are X's.
function unwrapNullable(openapi, schema) {
  const options = schema.anyOf || schema.oneOf;
  if (!options) return { schema: resolve(openapi, schema), nullable: false };
  const real = options.filter((o) => o.type !== "null");
  const nullable = real.length < options.length;
  if (real.length !== 1) return { schema: { ...schema, anyOf: undefined }, nullable };
  return { schema: { ...resolve(openapi, real[0]), ...pick(schema, ["title", "description", "default"]) }, nullable };
}

function pick(obj, keys) {
  const out = {};
  for (const k of keys) if (obj[k] !== undefined) out[k] = obj[k];
  return out;
}

const TWO_PASS = /(^|_)(first|second)_pass_/;
const ADVANCED_NAMES = new Set(["constant_rate_factor"]);

// Two-pass tuning, encoder details and ltxserve's own extensions go under "Advanced".
function groupOf(name, description) {
  if (TWO_PASS.test(name) || ADVANCED_NAMES.has(name)) return "advanced";
  if (/^ltxserve extension/i.test(description || "")) return "advanced";
  return "main";
}

function widgetOf(name, s) {
  if (s.enum) return "select";
  if (s.type === "boolean") return "checkbox";
  if (s.type === "integer" || s.type === "number") return "number";
  if (s.type === "string") {
    if (/(^|_)image_url$/.test(name)) return "image";
    if (/prompt/.test(name) || (s.maxLength || 0) > 500) return "textarea";
    return "text";
  }
  if (s.type === "array" && s.items && s.items.type === "object") return "rows";
  return "json";
}

// "first_pass_num_inference_steps" -> "First pass num inference steps"; "image_url" -> "Image URL"
export function humanize(name) {
  const special = { url: "URL", id: "ID", lora: "LoRA", loras: "LoRAs" };
  const words = name.split("_").map((w) => special[w.toLowerCase()] || w);
  const text = words.join(" ");
  return text.charAt(0).toUpperCase() + text.slice(1);
}

export function describeFields(openapi, objectSchema) {
  const schema = resolve(openapi, objectSchema);
  const required = new Set(schema.required || []);
  return Object.entries(schema.properties || {}).map(([name, raw]) => {
    const { schema: s, nullable } = unwrapNullable(openapi, raw);
    if (s.type === "array" && s.items) s.items = resolve(openapi, s.items);
    const field = {
      name,
      label: humanize(name),
      description: raw.description || s.description || "",
      required: required.has(name),
      hasDefault: "default" in raw || "default" in s,
      default: raw.default !== undefined ? raw.default : s.default,
      type: s.type,
      nullable,
      enum: s.enum,
      minimum: s.minimum ?? (s.exclusiveMinimum !== undefined ? s.exclusiveMinimum : undefined),
      maximum: s.maximum ?? (s.exclusiveMaximum !== undefined ? s.exclusiveMaximum : undefined),
      minLength: s.minLength,
      maxLength: s.maxLength,
      maxItems: s.maxItems,
      widget: widgetOf(name, s),
      group: groupOf(name, raw.description || s.description),
    };
    if (field.widget === "rows") field.items = describeFields(openapi, s.items);
    return field;
  });
}
