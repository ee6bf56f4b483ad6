// The page's only door to the server: the public /v1 API with the key the user pasted once.

const KEY_NAME = "openft.apiKey";

export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export const key = {
  get: () => localStorage.getItem(KEY_NAME),
  set: (value) => localStorage.setItem(KEY_NAME, value),
  clear: () => localStorage.removeItem(KEY_NAME),
};

/** Called on any 401 so the page can ask for the key again. */
let onUnauthorized = () => {};
export function setUnauthorizedHandler(handler) {
  onUnauthorized = handler;
}

async function raiseFor(response, storedKey = true) {
  let message = `${response.status} ${response.statusText}`;
  let code = null;
  try {
    const body = await response.json();
    if (body && body.error) {
      message = body.error.message || message;
      code = body.error.code || null;
    }
  } catch {
    // not JSON: keep the status line
  }
  if (response.status === 401 && storedKey) onUnauthorized(message);
  throw new ApiError(response.status, message, code);
}

/** fetch() under /v1 with the key; JSON in and out. `body` may be FormData (sent as multipart). */
export async function request(method, path, { body, apiKey, signal } = {}) {
  const headers = { Authorization: `Bearer ${apiKey ?? key.get() ?? ""}` };
  let payload = body;
  if (body !== undefined && !(body instanceof FormData)) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  const response = await fetch(`/v1${path}`, { method, headers, body: payload, signal });
  if (!response.ok) await raiseFor(response, apiKey === undefined);
  return response.json();
}

export const get = (path, options) => request("GET", path, options);
export const post = (path, body, options) => request("POST", path, { ...options, body });

/** The dashboard's own public config: which actions each job status allows (from the state machine). */
export async function dashboardConfig() {
  const response = await fetch("/dashboard/config.json");
  if (!response.ok) throw new ApiError(response.status, "Could not load the dashboard's configuration");
  return response.json();
}

/**
 * POST `body` as JSON and read the reply as server-sent events: yields `{ event, data }` per event (`event` is
 * "message" when the server names none). EventSource cannot POST or send a header, so the body's ReadableStream
 * is parsed here — the one SSE reader both playground modes use.
 */
async function* postEvents(path, body, signal) {
  const response = await fetch(`/v1${path}`, {
    method: "POST",
    headers: { Authorization: `Bearer ${key.get() ?? ""}`, "Content-Type": "application/json" },
    body: JSON.stringify(body),
    signal,
  });
  if (!response.ok) await raiseFor(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = "";
  let data = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      const lines = buffer.split(/\r?\n/);
      buffer = lines.pop();
      for (const line of lines) {
        if (line === "") {
          // a blank line ends an event; comments (": ping") and empty events dispatch nothing
          if (data.length) yield { event: event || "message", data: data.join("\n") };
          event = "";
          data = [];
        } else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        else if (line.startsWith("event:")) event = line.slice(6).trim();
      }
    }
  } finally {
    reader.cancel().catch(() => {}); // the caller stopped early (or the stream ended): release the connection
  }
}

/**
 * Stream a chat completion: calls onDelta(text) for each piece of content as it arrives, returns the finish
 * reason. The events are `data: {...}` chunks and `data: [DONE]` at the end.
 */
export async function streamChat(model, messages, onDelta, { maxTokens = 128, temperature = 0, signal } = {}) {
  const body = { model, messages, stream: true, max_tokens: maxTokens, temperature };
  let finish = null;
  for await (const { data } of postEvents("/chat/completions", body, signal)) {
    if (data === "[DONE]") return finish;
    const chunk = JSON.parse(data);
    if (chunk.error) throw new ApiError(500, chunk.error.message || "The stream failed", chunk.error.code);
    for (const choice of chunk.choices || []) {
      if (choice.delta && choice.delta.content) onDelta(choice.delta.content);
      if (choice.finish_reason) finish = choice.finish_reason;
    }
  }
  return finish;
}

/**
 * Stream a Responses API reply (`body` as for POST /v1/responses; `stream` is set here): calls onDelta(text) for
 * each `response.output_text.delta` and returns the final response (with `id` and `usage`) from
 * `response.completed`, or from `response.incomplete` when `max_output_tokens` cut it. `error` and
 * `response.failed` events throw, as does a stream that ends without a final response.
 */
export async function streamResponse(body, onDelta, { signal } = {}) {
  for await (const { data } of postEvents("/responses", { ...body, stream: true }, signal)) {
    const payload = JSON.parse(data);
    switch (payload.type) {
      case "response.output_text.delta":
        onDelta(payload.delta);
        break;
      case "response.completed":
      case "response.incomplete":
        return payload.response;
      case "response.failed": {
        const error = (payload.response && payload.response.error) || {};
        throw new ApiError(500, error.message || "The response failed", error.code || null);
      }
      case "error":
        throw new ApiError(500, payload.message || "The stream failed", payload.code || null);
      default: // created, in_progress, output_item.*, content_part.*, output_text.done, function calls
    }
  }
  throw new ApiError(500, "The stream ended before the response was complete", null);
}
