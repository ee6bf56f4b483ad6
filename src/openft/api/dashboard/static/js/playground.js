// The playground: one prompt, sent to a base model and to a fine-tuned model (or checkpoint) at once;
// both answers stream in side by side.

import { get, streamChat } from "./api.js";
import { errorBox, h, replace } from "./dom.js";

/** `ft:{base}:{org}:{suffix}:{id}[:ckpt-step-N]` → `{base}` (hub ids `org/name` hold no colon). */
export function baseOf(model) {
  return model.startsWith("ft:") ? model.split(":")[1] : model;
}

export function playgroundView(params) {
  const baseSelect = h("select", { id: "pg-base" });
  const tunedSelect = h("select", { id: "pg-tuned" });
  const prompt = h("textarea", { id: "pg-prompt", rows: 3, placeholder: "Ask both models something…" });
  const maxTokens = h("input", { id: "pg-max-tokens", type: "number", min: 1, max: 2048, value: "96" });
  const message = h("div");
  const panes = { base: pane("pg-base-answer"), tuned: pane("pg-tuned-answer") };
  let controller = null;

  tunedSelect.addEventListener("change", () => {
    const base = baseOf(tunedSelect.value);
    if ([...baseSelect.options].some((o) => o.value === base)) baseSelect.value = base;
  });

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
        { maxTokens: Number(maxTokens.value) || 96, signal: controller.signal },
      );
      replace(info, `${pieces} chunks in ${((performance.now() - started) / 1000).toFixed(1)} s, finish: ${finish}`);
      answer.parentElement.dataset.state = "done";
    } catch (error) {
      replace(info, errorBox(error.message));
      answer.parentElement.dataset.state = "error";
    }
  }

  async function submit(event) {
    event.preventDefault();
    if (!prompt.value.trim() || !tunedSelect.value) return;
    if (controller) controller.abort();
    controller = new AbortController();
    await Promise.all([run("base", baseSelect.value), run("tuned", tunedSelect.value)]);
  }

  loadModels(baseSelect, tunedSelect, params).catch((error) => replace(message, errorBox(error.message)));
  const node = h(
    "section",
    {},
    h("h1", {}, "Playground"),
    h(
      "form",
      { class: "card playground-form", onsubmit: submit },
      h("label", { class: "field" }, h("span", {}, "Base model"), baseSelect),
      h("label", { class: "field" }, h("span", {}, "Fine-tuned model or checkpoint"), tunedSelect),
      h("label", { class: "field wide" }, h("span", {}, "Prompt"), prompt),
      h("label", { class: "field" }, h("span", {}, "Max tokens"), maxTokens),
      h("div", {}, h("button", { type: "submit", class: "btn primary", id: "pg-send" }, "Send to both")),
      message,
    ),
    h("div", { class: "side-by-side" }, panes.base.node, panes.tuned.node),
  );
  return { node, dispose: () => controller && controller.abort() };
}

function pane(id) {
  const title = h("h2", { class: "mono" }, "—");
  const answer = h("pre", { class: "answer", id });
  const info = h("p", { class: "muted" });
  const node = h("div", { class: "card pane" }, title, answer, info);
  return { node, title, answer, info };
}

async function loadModels(baseSelect, tunedSelect, params) {
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
}
