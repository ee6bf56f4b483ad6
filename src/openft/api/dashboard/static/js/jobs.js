// The jobs list: status, progress and ETA of the latest jobs, refreshed every 2 s.

import { get } from "./api.js";
import { errorBox, h, replace, statusBadge, time } from "./dom.js";
import { poll } from "./poll.js";
import { eta, progressBar } from "./progress.js";

export function jobsView() {
  const body = h("tbody", {}, h("tr", {}, h("td", { colspan: 7, class: "muted" }, "Loading…")));
  const message = h("div");
  const table = h(
    "table",
    { class: "jobs", id: "jobs-table" },
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        ["Job", "Base model", "Fine-tuned model", "Status", "Progress", "ETA", "Created"].map((t) => h("th", {}, t)),
      ),
    ),
    body,
  );

  const refresh = async () => {
    const page = await get("/fine_tuning/jobs?limit=50");
    if (!page.data.length) {
      replace(body, h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No jobs yet: upload a file to start one.")));
    } else {
      replace(body, ...page.data.map(row));
    }
    replace(message);
  };
  const stop = poll(refresh, 2000, (error) => replace(message, errorBox(error.message)));
  const node = h(
    "section",
    {},
    h(
      "div",
      { class: "title-row" },
      h("h1", {}, "Fine-tuning jobs"),
      h("a", { class: "btn", href: "#/upload" }, "New job"),
    ),
    message,
    table,
  );
  return { node, dispose: stop };
}

function row(job) {
  const link = h("a", { href: `#/jobs/${encodeURIComponent(job.id)}` }, job.id);
  return h(
    "tr",
    { "data-job": job.id },
    h("td", { class: "mono nowrap" }, link),
    h("td", {}, job.model),
    h(
      "td",
      { class: "mono" },
      job.fine_tuned_model ||
        (job.user_provided_suffix ? h("span", { class: "muted" }, `suffix ${job.user_provided_suffix}`) : "—"),
    ),
    h("td", {}, statusBadge(job.status)),
    h("td", {}, progressBar(job)),
    h("td", {}, eta(job)),
    h("td", {}, time(job.created_at)),
  );
}
