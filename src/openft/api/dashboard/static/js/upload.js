// Upload a JSONL file by drag and drop (or the file picker), show the data checker's report, and
// create a job from it.

import { ApiError, get, post } from "./api.js";
import { duration, errorBox, h, replace } from "./dom.js";

export function uploadView(params) {
  const modelSelect = h("select", { id: "job-model" });
  const fileInput = h("input", { type: "file", id: "file-input", accept: ".jsonl,.json,application/jsonl" });
  const zone = h(
    "div",
    { class: "dropzone", id: "dropzone", tabindex: 0 },
    h("strong", {}, "Drop a JSONL training file here"),
    h("span", { class: "muted" }, " or "),
    h("label", { class: "btn small" }, "choose one", fileInput),
  );
  const status = h("div", { id: "upload-status" });
  const report = h("div", { id: "check-report" });
  const form = jobForm(modelSelect, params.get("file"));
  let latestCheck = 0; // only the newest check may fill the report (model and file can change mid-check)

  async function upload(file) {
    replace(status, h("p", { class: "muted" }, `Uploading ${file.name}…`));
    latestCheck += 1; // a check still running for another file must not report over this one
    replace(report);
    const body = new FormData();
    body.append("purpose", "fine-tune");
    body.append("file", file, file.name);
    try {
      const uploaded = await post("/files", body);
      replace(
        status,
        h(
          "p",
          { class: "ok", id: "uploaded" },
          `Uploaded ${uploaded.filename} as `,
          h("span", { class: "mono" }, uploaded.id),
          ` (${uploaded.bytes} bytes).`,
        ),
      );
      await form.reloadFiles(uploaded.id);
      await check(uploaded.id);
    } catch (error) {
      replace(status, errorBox(`Upload failed: ${error.message}`));
    }
  }

  async function check(fileId) {
    const mine = ++latestCheck;
    replace(report, h("p", { class: "muted" }, "Checking the data…"));
    try {
      const result = await get(
        `/files/${encodeURIComponent(fileId)}/check?model=${encodeURIComponent(modelSelect.value)}`,
      );
      if (mine !== latestCheck) return;
      replace(report, checkReport(result));
      form.adopt(result);
    } catch (error) {
      if (mine !== latestCheck) return;
      const missing = error instanceof ApiError && error.status === 404 && error.message.startsWith("Invalid URL");
      const text = missing
        ? `No data check available on this server (${error.message}); the job still validates the file when it starts.`
        : `The data check failed: ${error.message}`;
      replace(report, h("p", { class: "warn" }, text));
    }
  }

  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) upload(file);
  });
  fileInput.addEventListener("change", () => fileInput.files[0] && upload(fileInput.files[0]));
  const recheck = () => form.fileSelect.value && check(form.fileSelect.value);
  modelSelect.addEventListener("change", recheck);
  form.fileSelect.addEventListener("change", recheck);

  loadModels(modelSelect).catch((error) => replace(status, errorBox(error.message)));
  const node = h(
    "section",
    {},
    h("h1", {}, "New fine-tuning job"),
    h("div", { class: "card" }, h("h2", {}, "1. Training data"), zone, status, report),
    h("div", { class: "card" }, h("h2", {}, "2. Create the job"), form.node),
  );
  return { node };
}

async function loadModels(select) {
  const models = await get("/models");
  const bases = models.data.filter((m) => !m.id.startsWith("ft:"));
  const tuned = models.data.filter((m) => m.id.startsWith("ft:") && !m.id.includes(":ckpt-step-"));
  replace(
    select,
    h("optgroup", { label: "Base models" }, ...bases.map((m) => h("option", { value: m.id }, m.id))),
    tuned.length
      ? h("optgroup", { label: "Continue a fine-tune" }, ...tuned.map((m) => h("option", { value: m.id }, m.id)))
      : null,
  );
}

/** The checker's report: problems (with line numbers), token statistics, resolved "auto" values, time. */
function checkReport(r) {
  const verdict = r.ok
    ? h("p", { class: "ok" }, `✓ ${r.filename}: looks good for ${r.method} fine-tuning of ${r.model}.`)
    : h("p", { class: "error" }, `✗ ${r.filename}: ${r.problems.length} problem(s) — a job on it would fail.`);
  // A budget cut the check short: say which part was checked (the report's note says why).
  const cut = r.truncated ? h("p", { class: "note" }, `Only part of the file was checked: ${r.notes.at(-1)}`) : null;
  const problems = r.problems.length
    ? h(
        "table",
        { class: "problems" },
        h("thead", {}, h("tr", {}, h("th", {}, "Line"), h("th", {}, "Code"), h("th", {}, "Problem"))),
        h(
          "tbody",
          {},
          ...r.problems.map((p) =>
            h("tr", {}, h("td", {}, p.line ?? "—"), h("td", { class: "mono" }, p.code), h("td", {}, p.message)),
          ),
        ),
      )
    : null;
  const facts = [];
  if (r.stats) {
    const t = r.stats.tokens || {};
    facts.push(["Examples", r.stats.examples], ["Tokens per example", `min ${t.min}, mean ${t.mean}, max ${t.max}`]);
    facts.push(
      ["Total tokens", r.stats.total_tokens],
      ["Over the context", `${r.stats.over_context} (context ${r.stats.context_length})`],
    );
  }
  if (r.auto)
    facts.push([
      "Auto hyperparameters",
      Object.entries(r.auto)
        .map(([k, v]) => `${k} ${v}`)
        .join(", "),
    ]);
  if (r.steps) facts.push(["Steps", r.steps]);
  if (r.estimate) {
    const { seconds, tokens_per_second: speed, device, source } = r.estimate;
    facts.push(["Estimated time", `${duration(seconds)} (${speed} tokens/s on ${device}, ${source})`]);
  }
  if (r.memory) {
    const m = r.memory;
    const peak = `~${(m.peak_bytes / 2 ** 30).toFixed(1)} GiB peak`;
    const how = `${m.fine_tuning_mode}, sequences of up to ${m.longest_sequence} tokens, micro-batch ${m.micro_batch_size}`;
    facts.push(["Memory", `${peak} (${how}) — fits on: ${m.fits_on.join(", ") || "none of cpu, 24 GB, 80 GB"}`]);
  }
  return h(
    "div",
    { class: "report", "data-ok": String(r.ok) },
    verdict,
    cut,
    problems,
    facts.length
      ? h(
          "table",
          { class: "kv" },
          h("tbody", {}, ...facts.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, String(v))))),
        )
      : null,
  );
}

/** The create-job form: model, training/validation file, method, hyperparameters ("auto" when empty). */
function jobForm(modelSelect, preselected) {
  const fileSelect = h("select", { id: "job-training-file", required: true });
  const validationSelect = h("select", { id: "job-validation-file" });
  const methodSelect = h(
    "select",
    { id: "job-method" },
    h("option", { value: "supervised" }, "supervised"),
    h("option", { value: "dpo" }, "dpo"),
  );
  const epochs = h("input", { id: "job-epochs", type: "number", min: 1, max: 50, placeholder: "auto" });
  const batch = h("input", { id: "job-batch", type: "number", min: 1, max: 256, placeholder: "auto" });
  const lr = h("input", { id: "job-lr", type: "number", min: 0, step: "any", placeholder: "auto" });
  const suffix = h("input", { id: "job-suffix", type: "text", maxlength: 64, placeholder: "optional" });
  const message = h("div", { id: "create-status" });

  async function reloadFiles(selected) {
    const files = await get("/files?purpose=fine-tune&limit=100");
    const options = (withNone) => [
      withNone ? h("option", { value: "" }, "none") : null,
      ...files.data.map((f) => h("option", { value: f.id }, `${f.filename} (${f.id})`)),
    ];
    const keep = { training: selected || fileSelect.value, validation: validationSelect.value };
    replace(fileSelect, ...options(false));
    replace(validationSelect, ...options(true));
    if (keep.training) fileSelect.value = keep.training;
    validationSelect.value = keep.validation;
  }

  async function submit(event) {
    event.preventDefault();
    const hyperparameters = {};
    if (epochs.value) hyperparameters.n_epochs = Number(epochs.value);
    if (batch.value) hyperparameters.batch_size = Number(batch.value);
    if (lr.value) hyperparameters.learning_rate_multiplier = Number(lr.value);
    const type = methodSelect.value;
    const body = {
      model: modelSelect.value,
      training_file: fileSelect.value,
      method: { type, [type]: { hyperparameters } },
    };
    if (validationSelect.value) body.validation_file = validationSelect.value;
    if (suffix.value) body.suffix = suffix.value;
    try {
      const job = await post("/fine_tuning/jobs", body);
      location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
    } catch (error) {
      replace(message, errorBox(`Not created: ${error.message}`));
    }
  }

  reloadFiles(preselected).catch((error) => replace(message, errorBox(error.message)));
  const field = (label, input) => h("label", { class: "field" }, h("span", {}, label), input);
  const node = h(
    "form",
    { class: "job-form", onsubmit: submit },
    field("Model", modelSelect),
    field("Training file", fileSelect),
    field("Validation file", validationSelect),
    field("Method", methodSelect),
    field("Epochs", epochs),
    field("Batch size", batch),
    field("Learning-rate multiplier", lr),
    field("Suffix", suffix),
    h("div", {}, h("button", { type: "submit", class: "btn primary", id: "create-job" }, "Create job")),
    message,
  );
  /** Take the checked file's method, and show what "auto" would resolve to as the fields' placeholders. */
  function adopt(result) {
    if (result.method) methodSelect.value = result.method;
    const auto = result.auto || {};
    epochs.placeholder = auto.n_epochs ? `auto (${auto.n_epochs})` : "auto";
    batch.placeholder = auto.batch_size ? `auto (${auto.batch_size})` : "auto";
    lr.placeholder = auto.learning_rate_multiplier ? `auto (${auto.learning_rate_multiplier})` : "auto";
  }

  return { node, fileSelect, reloadFiles, adopt };
}
