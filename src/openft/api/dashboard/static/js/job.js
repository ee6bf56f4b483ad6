// One job: live loss chart, progress and ETA, pause / resume / cancel (enabled from the server's
// status → actions table), hyperparameters, checkpoints (each can be tried in the playground), events.

import { ApiError, get, post } from "./api.js";
import { LossChart } from "./chart.js";
import { errorBox, h, number, replace, statusBadge, time } from "./dom.js";
import { EventFeed } from "./events.js";
import { poll } from "./poll.js";
import { eta, progressBar } from "./progress.js";

const ACTIONS = [
  { action: "pause", label: "Pause", hint: "Checkpoint and stop; resume later exactly where it was" },
  { action: "resume", label: "Resume", hint: "Queue again; training continues from the checkpoint" },
  { action: "cancel", label: "Cancel", hint: "Stop for good" },
];

export function jobView(jobId, config) {
  const base = `/fine_tuning/jobs/${encodeURIComponent(jobId)}`;
  const feed = new EventFeed(jobId);
  const parts = {
    status: h("span"),
    buttons: h("div", { class: "actions" }),
    message: h("div", { id: "job-message" }),
    summary: h("dl", { class: "summary" }),
    hyper: h("div"),
    checkpoints: h("div"),
    events: h("ol", { class: "events", id: "events" }),
    chartBox: h("div", { class: "chart", id: "loss-chart" }),
    chartNote: h("p", { class: "muted", id: "chart-note" }, "Waiting for the first training step…"),
  };
  const chart = new LossChart(parts.chartBox);
  let job = null;
  let busy = false;
  let stop = () => {}; // set below, once polling starts

  const buttons = ACTIONS.map(({ action, label, hint }) =>
    h(
      "button",
      {
        type: "button",
        class: `btn action-${action}`,
        "data-action": action,
        title: hint,
        disabled: true,
        onclick: () => act(action),
      },
      label,
    ),
  );
  replace(parts.buttons, ...buttons);

  function showButtons() {
    const allowed = (job && config.actions[job.status]) || [];
    for (const button of buttons) button.disabled = busy || !allowed.includes(button.dataset.action);
  }

  async function act(action) {
    if (action === "cancel" && !confirm(`Cancel ${jobId}? A cancelled job cannot be resumed.`)) return;
    busy = true;
    showButtons();
    try {
      job = await post(`${base}/${action}`);
      replace(parts.message);
      showJob();
    } catch (error) {
      const why = error instanceof ApiError && error.status === 409 ? "Not possible in this status" : "Failed";
      replace(parts.message, errorBox(`${why}: ${error.message}`));
    } finally {
      busy = false;
      showButtons();
    }
  }

  let lastLoss = null; // the newest metrics event's train loss: the one number here the job object lacks
  function showJob() {
    replace(parts.status, statusBadge(job.status));
    parts.root.dataset.status = job.status;
    showButtons();
    const playground = job.fine_tuned_model
      ? h("a", { href: playgroundLink(job.fine_tuned_model, job.model), class: "btn small" }, "Try in playground")
      : null;
    replace(
      parts.summary,
      ...entry("Base model", job.model),
      ...entry("Fine-tuned model", h("span", { class: "mono" }, job.fine_tuned_model || "—"), " ", playground),
      ...entry("Progress", progressBar(job)),
      ...entry("ETA", eta(job)),
      ...entry("Trained tokens", job.trained_tokens ?? "—"),
      ...entry("Training file", job.training_file),
      ...entry("Validation file", job.validation_file || "—"),
      ...entry("Seed", job.seed),
      ...entry("Created", time(job.created_at)),
      ...entry("Finished", time(job.finished_at)),
      ...(job.error ? entry("Error", h("span", { class: "error" }, `${job.error.code}: ${job.error.message}`)) : []),
    );
    replace(parts.hyper, hyperparameters(job));
    if (lastLoss !== null && job.total_steps != null)
      replace(parts.chartNote, `Step ${job.completed_steps} of ${job.total_steps}: train loss ${number(lastLoss)}`);
  }

  function showEvents(fresh, reset) {
    if (reset) {
      chart.clear();
      lastLoss = null;
    }
    const metrics = fresh.filter((e) => e.type === "metrics").map((e) => e.data);
    if (metrics.length) {
      chart.add(metrics);
      lastLoss = metrics[metrics.length - 1].train_loss;
    }
    const messages = feed.events.filter((e) => e.type !== "metrics").slice(0, 200);
    replace(
      parts.events,
      ...messages.map((e) => h("li", { class: `level-${e.level}` }, h("time", {}, time(e.created_at)), " ", e.message)),
    );
  }

  async function refresh() {
    job = await get(base);
    const { fresh, reset } = await feed.update();
    showEvents(fresh, reset);
    showJob();
    const checkpoints = await get(`${base}/checkpoints?limit=100`);
    replace(parts.checkpoints, checkpointTable(job, checkpoints.data));
    if (config.terminal.includes(job.status)) stop(); // nothing will change any more
  }

  parts.root = h(
    "section",
    { class: "job", "data-job": jobId },
    h("div", { class: "title-row" }, h("h1", { class: "mono" }, jobId), parts.status, parts.buttons),
    parts.message,
    h(
      "div",
      { class: "grid" },
      h("div", { class: "card" }, parts.summary),
      h("div", { class: "card" }, h("h2", {}, "Hyperparameters"), parts.hyper),
    ),
    h("div", { class: "card" }, h("h2", {}, "Loss"), parts.chartBox, parts.chartNote),
    h("div", { class: "card" }, h("h2", {}, "Checkpoints"), parts.checkpoints),
    h("div", { class: "card" }, h("h2", {}, "Events"), parts.events),
  );
  stop = poll(refresh, 1000, (error) => replace(parts.message, errorBox(error.message)));
  return {
    node: parts.root,
    dispose: () => {
      stop();
      chart.destroy();
    },
  };
}

function entry(label, ...value) {
  return [h("dt", {}, label), h("dd", {}, ...value)];
}

function playgroundLink(model, baseModel) {
  return `#/playground?${new URLSearchParams({ model, base: baseModel })}`;
}

function hyperparameters(job) {
  const method = job.method || {};
  const values = {
    method: method.type || "supervised",
    ...job.hyperparameters,
    ...((method[method.type] || {}).hyperparameters || {}),
  };
  return h(
    "table",
    { class: "kv", id: "hyperparameters" },
    h(
      "tbody",
      {},
      ...Object.entries(values).map(([k, v]) =>
        h("tr", {}, h("th", {}, k), h("td", {}, typeof v === "object" ? JSON.stringify(v) : String(v))),
      ),
    ),
  );
}

function checkpointTable(job, checkpoints) {
  if (!checkpoints.length)
    return h("p", { class: "muted" }, "None yet: one is written at each epoch end and on pause.");
  return h(
    "table",
    { class: "checkpoints", id: "checkpoints" },
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        ["Step", "Model name", "Metrics", ""].map((t) => h("th", {}, t)),
      ),
    ),
    h(
      "tbody",
      {},
      ...checkpoints.map((c) =>
        h(
          "tr",
          {},
          h("td", {}, c.step_number),
          h("td", { class: "mono" }, c.fine_tuned_model_checkpoint),
          h(
            "td",
            {},
            Object.entries(c.metrics || {})
              .filter(([k]) => k !== "step")
              .map(([k, v]) => `${k} ${number(v)}`)
              .join(", "),
          ),
          h(
            "td",
            {},
            h(
              "a",
              { class: "btn small", href: playgroundLink(c.fine_tuned_model_checkpoint, job.model) },
              "Try in playground",
            ),
          ),
        ),
      ),
    ),
  );
}
