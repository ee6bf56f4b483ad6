// A job's progress: the newest `metrics` event carries {step, total_steps}; finished jobs need none.

import { get } from "./api.js";
import { fromNow, h } from "./dom.js";

/** {step, total} from the newest metrics event of the latest 20 (a pause and resume write ~10 messages), or null. */
export async function latestStep(jobId) {
  const page = await get(`/fine_tuning/jobs/${encodeURIComponent(jobId)}/events?limit=20`);
  const metrics = page.data.find((event) => event.type === "metrics");
  return metrics ? { step: metrics.data.step, total: metrics.data.total_steps } : null;
}

export function progressBar(status, progress) {
  const fraction = status === "succeeded" ? 1 : progress && progress.total ? progress.step / progress.total : 0;
  const label =
    status === "succeeded"
      ? "done"
      : progress
        ? `${progress.step} / ${progress.total} steps (${Math.floor(fraction * 100)}%)`
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
