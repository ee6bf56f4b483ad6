// The playground, in two modes:
//   Chat       one prompt, sent to a base model and to a fine-tuned model (or checkpoint) at once through
//              /v1/chat/completions; both answers stream in side by side.
//   Responses  a conversation with one model through /v1/responses: each turn sends only the new message and
//              `previous_response_id`, so the server (not the page) keeps the history — what a Responses client does.

import { get, streamChat, streamResponse } from "./api.js";
import { errorBox, h, replace } from "./dom.js";

const MODES = ["chat", "responses"];

/** `ft:{base}:{org}:{suffix}:{id}[:ckpt-step-N]` → `{base}` (hub ids `org/name` hold no colon). */
export function baseOf(model) {
  return model.startsWith("ft:") ? model.split(":")[1] : model;
}

export function playgroundView(params) {
  const baseSelect = h("select", { id: "pg-base" });
  const tunedSelect = h("select", { id: "pg-tuned" });
  const modelSelect = h("select", { id: "pg-model" });
  const instructions = h("textarea", {
    id: "pg-instructions",
    rows: 2,
    placeholder: "Optional system instructions, sent with every turn",
  });
  const prompt = h("textarea", { id: "pg-prompt", rows: 3 });
  const maxTokens = h("input", { id: "pg-max-tokens", type: "number", min: 1, max: 2048, value: "96" });
  const temperature = h("input", { id: "pg-temperature", type: "number", min: 0, max: 2, step: 0.1, value: "0" });
  const send = h("button", { type: "submit", class: "btn primary", id: "pg-send" });
  const newConversation = h("button", { type: "button", class: "btn", id: "pg-new" }, "New conversation");
  const message = h("div");
  const panes = { base: pane("pg-base-answer"), tuned: pane("pg-tuned-answer") };
  const conversation = h("div", { id: "pg-conversation", class: "conversation" });
  const threadNote = h("p", { id: "pg-thread", class: "muted" });
  const switches = Object.fromEntries(
    MODES.map((m) => [m, h("button", { type: "button", id: `pg-mode-${m}`, "data-mode": m }, modeTitle(m))]),
  );
  let controller = null; // the chat mode's two streams
  let responding = null; // the Responses mode's stream, while one runs
  let previousResponseId = null; // the last completed response: the next turn continues it
  let mode = MODES.includes(params.get("mode")) ? params.get("mode") : "chat";

  tunedSelect.addEventListener("change", () => {
    const base = baseOf(tunedSelect.value);
    if ([...baseSelect.options].some((o) => o.value === base)) baseSelect.value = base;
  });

  function limits() {
    const value = Number(temperature.value);
    return { maxTokens: Number(maxTokens.value) || 96, temperature: Number.isFinite(value) ? value : 0 };
  }

  async function run(which, model) {
    const { title, answer, info } = panes[which];
    replace(title, model);
    replace(answer);
    replace(info, "streaming…");
    answer.parentElement.dataset.state = "streaming";
    const started = performance.now();
    let pieces = 0;
    try {
      const messages = [{ role: "user", content: prompt.value }];
      const finish = await streamChat(
        model,
        messages,
        (text) => {
          pieces += 1;
          answer.append(text);
        },
        { ...limits(), signal: controller.signal },
      );
      replace(info, `${pieces} chunks in ${((performance.now() - started) / 1000).toFixed(1)} s, finish: ${finish}`);
      answer.parentElement.dataset.state = "done";
    } catch (error) {
      replace(info, errorBox(error.message));
      answer.parentElement.dataset.state = "error";
    }
  }

  async function submitChat() {
    if (!tunedSelect.value) return;
    if (controller) controller.abort();
    controller = new AbortController();
    await Promise.all([run("base", baseSelect.value), run("tuned", tunedSelect.value)]);
  }

  function showThread() {
    if (previousResponseId) {
      replace(
        threadNote,
        "The next message continues ",
        h("code", { id: "pg-response-id" }, previousResponseId),
        " (previous_response_id): only the new message is sent.",
      );
    } else replace(threadNote, "New conversation: the next message starts one.");
    newConversation.disabled = !previousResponseId && !conversation.childElementCount;
  }

  async function submitResponse() {
    if (responding || !modelSelect.value) return;
    const text = prompt.value;
    const { maxTokens: max, temperature: temp } = limits();
    const body = { model: modelSelect.value, input: text, max_output_tokens: max, temperature: temp };
    if (instructions.value.trim()) body.instructions = instructions.value;
    if (previousResponseId) body.previous_response_id = previousResponseId;
    const answer = h("pre", { class: "answer" });
    const info = h("p", { class: "muted info" }, "streaming…");
    const turn = h("div", { class: "turn assistant", "data-state": "streaming" }, answer, info);
    conversation.append(h("div", { class: "turn user" }, h("pre", { class: "answer" }, text)), turn);
    prompt.value = "";
    responding = new AbortController();
    send.disabled = true;
    showThread();
    try {
      const response = await streamResponse(body, (delta) => answer.append(delta), { signal: responding.signal });
      previousResponseId = response.id;
      turn.dataset.response = response.id;
      const usage = response.usage || {};
      replace(
        info,
        h("code", { class: "response-id" }, response.id),
        ` · ${usage.total_tokens ?? "?"} tokens (${usage.input_tokens ?? "?"} in, ${usage.output_tokens ?? "?"} out)`,
        response.status === "incomplete" ? " · cut at max tokens" : "",
      );
      turn.dataset.state = "done";
    } catch (error) {
      replace(info, errorBox(error.message));
      turn.dataset.state = "error";
    } finally {
      responding = null;
      send.disabled = false;
      showThread();
    }
  }

  async function submit(event) {
    event.preventDefault();
    if (!prompt.value.trim()) return;
    await (mode === "responses" ? submitResponse() : submitChat());
  }

  newConversation.addEventListener("click", () => {
    if (responding) responding.abort();
    previousResponseId = null;
    replace(conversation);
    showThread();
    prompt.focus();
  });

  const field = (label, control, wide = false) =>
    h("label", { class: wide ? "field wide" : "field" }, h("span", {}, label), control);
  const chatFields = [field("Base model", baseSelect), field("Fine-tuned model or checkpoint", tunedSelect)];
  const responsesFields = [field("Model", modelSelect), field("Instructions", instructions, true)];
  const sideBySide = h("div", { class: "side-by-side" }, panes.base.node, panes.tuned.node);
  const thread = h("div", { class: "card" }, h("h2", {}, "Conversation"), conversation, threadNote);
  const chatOnly = [...chatFields, sideBySide];
  const responsesOnly = [...responsesFields, newConversation, thread];

  loadModels(baseSelect, tunedSelect, modelSelect, params).catch((error) => replace(message, errorBox(error.message)));
  const node = h(
    "section",
    { class: "playground" },
    h(
      "div",
      { class: "title-row" },
      h("h1", {}, "Playground"),
      h("div", { class: "mode-switch", role: "group", "aria-label": "Mode" }, switches.chat, switches.responses),
    ),
    h(
      "form",
      { class: "card playground-form", onsubmit: submit },
      chatFields,
      responsesFields[0],
      field("Max tokens", maxTokens),
      field("Temperature", temperature),
      responsesFields[1],
      field("Prompt", prompt, true),
      h("div", { class: "buttons" }, send, newConversation),
      message,
    ),
    sideBySide,
    thread,
  );

  function setMode(next) {
    mode = next;
    node.dataset.mode = mode;
    for (const [m, button] of Object.entries(switches)) button.setAttribute("aria-pressed", String(m === mode));
    for (const element of chatOnly) element.hidden = mode !== "chat";
    for (const element of responsesOnly) element.hidden = mode !== "responses";
    replace(send, mode === "chat" ? "Send to both" : "Send");
    prompt.placeholder = mode === "chat" ? "Ask both models something…" : "Message the model…";
    // kept in the URL for a reload, without a hashchange (which would rebuild the view and drop the conversation)
    const [path, query = ""] = location.hash.split("?");
    const kept = new URLSearchParams(query);
    kept.set("mode", mode);
    history.replaceState(null, "", `${path}?${kept}`);
  }
  for (const [m, button] of Object.entries(switches)) button.addEventListener("click", () => setMode(m));
  setMode(mode);
  showThread();
  return {
    node,
    dispose: () => {
      if (controller) controller.abort();
      if (responding) responding.abort();
    },
  };
}

function modeTitle(mode) {
  return mode === "chat" ? "Chat" : "Responses";
}

function pane(id) {
  const title = h("h2", { class: "mono" }, "—");
  const answer = h("pre", { class: "answer", id });
  const info = h("p", { class: "muted" });
  const node = h("div", { class: "card pane" }, title, answer, info);
  return { node, title, answer, info };
}

async function loadModels(baseSelect, tunedSelect, modelSelect, params) {
  const models = await get("/models");
  const ids = models.data.map((m) => m.id);
  const bases = ids.filter((id) => !id.startsWith("ft:"));
  const tuned = ids.filter((id) => id.startsWith("ft:"));
  const wanted = params.get("model");
  if (wanted && !tuned.includes(wanted)) tuned.unshift(wanted); // a checkpoint listed by its job
  replace(baseSelect, ...bases.map((id) => h("option", { value: id }, id)));
  if (!tuned.length) tunedSelect.append(h("option", { value: "" }, "no fine-tuned model yet"));
  else replace(tunedSelect, ...tuned.map((id) => h("option", { value: id }, id)));
  if (wanted) tunedSelect.value = wanted;
  const base = params.get("base") || baseOf(tunedSelect.value || "");
  if (bases.includes(base)) baseSelect.value = base;
  replace(modelSelect, ...[...tuned, ...bases].map((id) => h("option", { value: id }, id)));
  modelSelect.value = tunedSelect.value || baseSelect.value;
}
