// A job's progress and ETA, read from the job object itself: `completed_steps` / `total_steps` (openft's
// extension fields, docs/api-compatibility.md §4; null until the files are validated) and the standard
// `estimated_finish`, or `queue_position` / `estimated_start` while it waits.

import { fromNow, h } from "./dom.js";

export function progressBar(job) {
  const { status, completed_steps: step, total_steps: total } = job;
  const known = total !== null && total !== undefined && total > 0;
  const fraction = status === "succeeded" ? 1 : known ? (step || 0) / total : 0;
  const label =
    status === "succeeded"
      ? "done"
      : known
        ? `${step || 0} / ${total} steps (${Math.floor(fraction * 100)}%)`
        : "—";
  return h(
    "div",
    { class: "progress", title: label },
    h("progress", { max: 1, value: fraction }),
    h("span", { class: "progress-label" }, label),
  );
}

/** What the job waits for: finish time while it runs, start (and place) while queued. */
export function eta(job) {
  if (job.status === "queued") {
    const place = job.queue_position ? `#${job.queue_position} in queue` : "queued";
    return job.estimated_start ? `${place}, starts ${fromNow(job.estimated_start)}` : place;
  }
  if (job.estimated_finish && ["running", "pausing"].includes(job.status))
    return `ends ${fromNow(job.estimated_finish)}`;
  return "—";
}
