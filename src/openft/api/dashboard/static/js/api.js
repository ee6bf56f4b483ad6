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
 * Stream a chat completion: calls onDelta(text) for each piece of content as it arrives.
 * The reply is server-sent events (`data: {...}` lines, `data: [DONE]` at the end), read from the body's
 * ReadableStream since EventSource cannot POST or send a header.
 */
export async function streamChat(model, messages, onDelta, { maxTokens = 128, signal } = {}) {
  const response = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: { Authorization: `Bearer ${key.get() ?? ""}`, "Content-Type": "application/json" },
    body: JSON.stringify({ model, messages, stream: true, max_tokens: maxTokens, temperature: 0 }),
    signal,
  });
  if (!response.ok) await raiseFor(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let finish = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    const lines = buffer.split(/\r?\n/);
    buffer = lines.pop();
    for (const line of lines) {
      if (!line.startsWith("data:")) continue;
      const data = line.slice(5).trim();
      if (data === "[DONE]") return finish;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new ApiError(500, chunk.error.message || "The stream failed", chunk.error.code);
      for (const choice of chunk.choices || []) {
        if (choice.delta && choice.delta.content) onDelta(choice.delta.content);
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    }
  }
  return finish;
}
