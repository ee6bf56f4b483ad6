// One eval (#/evals/<id>?a=<run>&b=<run>): its runs side by side, one column per run, one row per testing
// criterion (its pass rate, passed / (passed + failed), from the run's per_testing_criteria_results) and per
// result count; the best value of each row is highlighted. While a run is queued or in progress the runs are
// read again every 2 s. Below, two chosen runs' output items side by side (compare.js): where a fine-tuned
// model answers differently from its base.

import { ApiError, get } from "./api.js";
import { compareView } from "./compare.js";
import { errorBox, h, replace, statusBadge, time } from "./dom.js";
import { poll } from "./poll.js";

const RUNS_SHOWN = 20; // the newest runs; listing echoes each run's data source (a file_content run's items)
const WORKING = new Set(["queued", "in_progress"]);

/** passed / (passed + failed) as { value, text, detail }; value null when nothing was graded yet. */
export function passRate(passed, failed) {
  const graded = passed + failed;
  if (!graded) return { value: null, text: "—", detail: "none graded" };
  const value = passed / graded;
  return { value, text: `${(value * 100).toFixed(1)}%`, detail: `${passed} / ${graded}` };
}

/** The table's rows: each criterion's pass rate (higher is better), then the run's result counts. */
function rowsOf(evaluation, runs) {
  const criteria = evaluation.testing_criteria || [];
  const count = Math.max(criteria.length, ...runs.map((r) => (r.per_testing_criteria_results || []).length));
  const rows = [];
  for (let i = 0; i < count; i += 1) {
    const criterion = criteria[i] || {};
    const results = runs.map((run) => (run.per_testing_criteria_results || [])[i]);
    const name = criterion.name || results.find(Boolean)?.testing_criteria || `criterion ${i + 1}`;
    rows.push({
      key: `criterion-${i}`,
      label: [name, h("span", { class: "muted" }, ` ${criterion.type || ""} pass rate`)],
      better: "higher",
      cell: (run) => {
        const result = (run.per_testing_criteria_results || [])[i];
        if (!result) return { value: null, nodes: ["—"] };
        const rate = passRate(result.passed, result.failed);
        return { value: rate.value, nodes: [rate.text, h("span", { class: "muted detail" }, rate.detail)] };
      },
    });
  }
  const counts = [
    ["passed", "Passed", "higher"],
    ["failed", "Failed", "lower"],
    ["errored", "Errored", "lower"],
    ["total", "Total", null], // how far a run got, not how good it is
  ];
  for (const [key, label, better] of counts) {
    rows.push({
      key,
      label: [label, h("span", { class: "muted" }, " items")],
      better,
      cell: (run) => {
        const value = (run.result_counts || {})[key] ?? 0;
        return { value, nodes: [String(value)] };
      },
    });
  }
  return rows;
}

function runHeader(run) {
  return h(
    "th",
    { class: "run", "data-run": run.id, "data-status": run.status },
    h("div", { class: "run-name" }, run.name),
    h("div", { class: "mono muted" }, run.id),
    h("div", { class: "run-model mono" }, run.model || h("span", { class: "muted" }, "given samples (jsonl)")),
    h("div", {}, statusBadge(run.status), " ", h("span", { class: "muted" }, time(run.created_at))),
    run.error ? errorBox(`${run.error.code}: ${run.error.message}`) : null,
  );
}

function runsTable(evaluation, runs) {
  const body = rowsOf(evaluation, runs).map((row) => {
    const cells = runs.map((run) => ({ run, ...row.cell(run) }));
    const values = cells.map((c) => c.value).filter((v) => v !== null);
    // highlighted only where the runs differ: a row where every run scores the same has no best
    let best = null;
    if (row.better && new Set(values).size > 1) {
      best = row.better === "higher" ? Math.max(...values) : Math.min(...values);
    }
    return h(
      "tr",
      { "data-row": row.key },
      h("th", {}, row.label),
      cells.map((c) =>
        h("td", { "data-run": c.run.id, class: c.value !== null && c.value === best ? "best" : null }, c.nodes),
      ),
    );
  });
  return h(
    "table",
    { class: "jobs runs", id: "runs-table" },
    h("thead", {}, h("tr", {}, h("th", {}, "Run"), runs.map(runHeader))),
    h("tbody", {}, body),
  );
}

function evalSummary(evaluation) {
  const criteria = evaluation.testing_criteria || [];
  return h(
    "dl",
    { class: "summary" },
    h("dt", {}, "Eval"),
    h("dd", { class: "mono" }, evaluation.id),
    h("dt", {}, "Created"),
    h("dd", {}, time(evaluation.created_at)),
    h("dt", {}, "Testing criteria"),
    h(
      "dd",
      { id: "eval-criteria" },
      criteria.length
        ? criteria.flatMap((c, i) => [i ? ", " : "", h("strong", {}, c.name || "(unnamed)"), ` (${c.type})`])
        : "none",
    ),
  );
}

export function evalView(evalId, params) {
  const base = `/evals/${encodeURIComponent(evalId)}`;
  const title = h("h1", {}, "Eval");
  const summary = h("div", { class: "card" }, h("p", { class: "muted" }, "Loading…"));
  const runsBox = h("div", { id: "runs" });
  const runsNote = h("p", { class: "muted", id: "runs-note" });
  const message = h("div", { id: "eval-message" });
  const compare = compareView(evalId, params);
  let evaluation = null;
  let stop = () => {}; // set below, once polling starts

  async function refresh() {
    if (!evaluation) {
      evaluation = await get(base);
      replace(title, evaluation.name || "(unnamed eval)");
      replace(summary, evalSummary(evaluation));
    }
    const page = await get(`${base}/runs?${new URLSearchParams({ limit: String(RUNS_SHOWN), order: "desc" })}`);
    const runs = page.data.slice().reverse(); // oldest on the left: the base run is usually made first
    if (!runs.length) replace(runsBox, h("p", { class: "muted" }, "No runs yet: client.evals.runs.create(…)."));
    else replace(runsBox, runsTable(evaluation, runs));
    const working = runs.filter((r) => WORKING.has(r.status)).length;
    replace(
      runsNote,
      page.has_more ? `The newest ${RUNS_SHOWN} runs. ` : "",
      working ? `${working} run(s) still queued or in progress: refreshed every 2 s.` : "",
    );
    compare.setRuns(runs);
    replace(message);
    if (!working) stop(); // finished runs do not change
  }
  stop = poll(refresh, 2000, (error) => {
    replace(message, errorBox(error.message));
    if (error instanceof ApiError && error.status === 404) stop();
  });

  const node = h(
    "section",
    { class: "eval" },
    h("div", { class: "title-row" }, title, h("a", { href: "#/evals" }, "All evals")),
    message,
    summary,
    h("div", { class: "card" }, h("h2", {}, "Runs side by side"), runsBox, runsNote),
    compare.node,
  );
  return {
    node,
    dispose: () => {
      stop();
      compare.dispose();
    },
  };
}
