// Two runs of one eval, item by item: each row is one data source item (`datasource_item_id`), with each run's
// sample output text and its pass / fail per testing criterion, so a reader sees where the fine-tuned model
// answers differently from its base. Output items are read as the SDKs page them (`limit`, `after` = the last
// output item id), at most PAGE per run and page; "Next" continues from where both runs were shown.

import { get } from "./api.js";
import { errorBox, h, replace } from "./dom.js";

const PAGE = 100; // the API's largest `limit`
const FINAL = new Set(["completed", "failed", "canceled"]);
const SIDES = ["a", "b"];

/** A message's content as text: a string, or the `text` of each part of a list. */
function contentText(content) {
  if (typeof content === "string") return content;
  if (Array.isArray(content)) return content.map((part) => (part && part.text) || "").join("");
  return "";
}

/** The sample's answer: its assistant messages' text (a jsonl run's given `output_text`, a model's reply). */
export function outputText(item) {
  const output = (item.sample && item.sample.output) || [];
  return output
    .filter((m) => !m.role || m.role === "assistant")
    .map((m) => contentText(m.content))
    .join("\n");
}

/** Whether two runs' output items for the same data source item differ (answer, status or any criterion). */
function differs(x, y) {
  if (!x || !y) return true;
  if (x.status !== y.status || outputText(x) !== outputText(y)) return true;
  const passes = (item) => (item.results || []).map((r) => r.passed).join();
  return passes(x) !== passes(y);
}

/**
 * Align two pages by `datasource_item_id`. A run with more items cuts the window at its page's last item: past
 * it, the other run's items are kept for the next page, so no row is shown with a side that is only not read yet.
 */
export function align(pages, cursors) {
  const cuts = SIDES.filter((s) => pages[s].has_more && pages[s].data.length).map(
    (s) => pages[s].data[pages[s].data.length - 1].datasource_item_id,
  );
  const bound = Math.min(Infinity, ...cuts);
  const rows = new Map();
  const next = { ...cursors };
  let more = false;
  for (const side of SIDES) {
    for (const item of pages[side].data) {
      if (item.datasource_item_id > bound) {
        more = true;
        continue;
      }
      if (!rows.has(item.datasource_item_id)) rows.set(item.datasource_item_id, {});
      rows.get(item.datasource_item_id)[side] = item;
      next[side] = item.id;
    }
    more = more || pages[side].has_more;
  }
  const ordered = [...rows.entries()].sort((x, y) => x[0] - y[0]);
  return { rows: ordered, next, more };
}

function verdict(status) {
  return h("span", { class: `verdict verdict-${status}`, "data-verdict": status }, status);
}

function side(item, which) {
  if (!item) return h("td", { "data-side": which, class: "muted" }, "not graded (yet)");
  const results = (item.results || []).map((r) =>
    h(
      "li",
      { class: r.passed ? "pass" : "fail", "data-criterion": r.name, "data-passed": String(r.passed) },
      `${r.passed ? "✓" : "✗"} ${r.name}`,
      h("span", { class: "muted" }, ` score ${typeof r.score === "number" ? r.score : "—"}`),
    ),
  );
  const error = item.sample && item.sample.error;
  return h(
    "td",
    { "data-side": which, "data-output-item": item.id },
    verdict(item.status),
    h("pre", { class: "output" }, outputText(item)),
    error ? errorBox(`${error.code}: ${error.message}`) : null,
    h("ul", { class: "results" }, results),
  );
}

export function compareView(evalId, params) {
  const selects = Object.fromEntries(SIDES.map((s) => [s, h("select", { id: `cmp-${s}` })]));
  const onlyDiffering = h("input", { type: "checkbox", id: "cmp-differing" });
  const previous = h("button", { type: "button", class: "btn", id: "cmp-previous", disabled: true }, "Previous");
  const next = h("button", { type: "button", class: "btn", id: "cmp-next", disabled: true }, `Next ${PAGE}`);
  const note = h("p", { class: "muted", id: "cmp-note" }, "Choose two runs to compare their items.");
  const message = h("div");
  const heads = Object.fromEntries(SIDES.map((s) => [s, h("th", { class: "mono" }, "—")]));
  const body = h("tbody");
  const table = h(
    "table",
    { class: "jobs compare", id: "items-table", hidden: true },
    h("thead", {}, h("tr", {}, h("th", {}, "#"), h("th", {}, "Item"), heads.a, heads.b)),
    body,
  );
  let runs = new Map(); // id → run, as last listed
  let chosen = { a: params.get("a"), b: params.get("b") };
  let cursors = { a: null, b: null }; // `after` of the page shown
  let following = null; // `after` of the next page
  const earlier = []; // cursors of the pages before, for "Previous"
  let loading = 0; // only the latest load may render
  let shown = []; // the aligned rows of this page

  function render() {
    const differing = shown.filter(([, pair]) => differs(pair.a, pair.b));
    const visible = onlyDiffering.checked ? differing : shown;
    replace(
      body,
      visible.map(([id, pair]) =>
        h(
          "tr",
          { "data-item": id, class: differs(pair.a, pair.b) ? "differs" : null },
          h("td", { class: "mono" }, String(id)),
          h("td", {}, h("pre", { class: "item" }, JSON.stringify((pair.a || pair.b).datasource_item))),
          side(pair.a, "a"),
          side(pair.b, "b"),
        ),
      ),
    );
    const ids = shown.map(([id]) => id);
    const range = ids.length ? `items ${ids[0]}–${ids[ids.length - 1]}` : "no items";
    const working = SIDES.some((s) => !FINAL.has((runs.get(chosen[s]) || {}).status));
    replace(
      note,
      `${shown.length} rows (${range}, at most ${PAGE} per run and page), ${differing.length} differ.`,
      following ? ` More follow: “Next ${PAGE}”.` : "",
      working ? " A run is still going: its items graded so far." : "",
    );
    previous.disabled = !earlier.length;
    next.disabled = !following;
  }

  async function load() {
    const token = ++loading;
    table.hidden = false;
    replace(note, "Loading items…");
    try {
      const read = (s) => {
        const query = new URLSearchParams({ limit: String(PAGE) });
        if (cursors[s]) query.set("after", cursors[s]);
        const run = encodeURIComponent(chosen[s]);
        return get(`/evals/${encodeURIComponent(evalId)}/runs/${run}/output_items?${query}`);
      };
      const [a, b] = await Promise.all(SIDES.map(read));
      if (token !== loading) return;
      const aligned = align({ a, b }, cursors);
      shown = aligned.rows;
      following = aligned.more ? aligned.next : null;
      replace(message);
      render();
    } catch (error) {
      if (token === loading) replace(message, errorBox(error.message));
    }
  }

  function choose() {
    chosen = { a: selects.a.value || null, b: selects.b.value || null };
    const [path, query = ""] = location.hash.split("?");
    const kept = new URLSearchParams(query);
    for (const s of SIDES) {
      if (chosen[s]) kept.set(s, chosen[s]);
      else kept.delete(s);
    }
    history.replaceState(null, "", `${kept}` ? `${path}?${kept}` : path); // no hashchange: no rebuild
    cursors = { a: null, b: null };
    earlier.length = 0;
    shown = [];
    replace(body); // no rows of the runs chosen before under the new runs' names
    if (!chosen.a || !chosen.b || chosen.a === chosen.b) {
      loading += 1;
      table.hidden = true;
      replace(note, chosen.a && chosen.a === chosen.b ? "Choose two different runs." : "Choose two runs.");
      return;
    }
    for (const s of SIDES) {
      const run = runs.get(chosen[s]);
      replace(heads[s], run.name, h("div", { class: "muted" }, run.model || "given samples (jsonl)"));
    }
    load();
  }

  for (const s of SIDES) selects[s].addEventListener("change", choose);
  onlyDiffering.addEventListener("change", render);
  next.addEventListener("click", () => {
    earlier.push(cursors);
    cursors = following;
    load();
  });
  previous.addEventListener("click", () => {
    cursors = earlier.pop();
    load();
  });

  /** The runs as eval.js last read them: fills the choices; a chosen run that changed status is read again. */
  function setRuns(list) {
    const before = runs;
    runs = new Map(list.map((r) => [r.id, r]));
    const first = !before.size;
    if (first && !chosen.a && !chosen.b && list.length >= 2) chosen = { a: list[0].id, b: list[1].id };
    for (const s of SIDES) {
      const options = list.map((r) => h("option", { value: r.id }, `${r.name} (${r.id})`));
      replace(selects[s], h("option", { value: "" }, "— choose a run —"), options);
      selects[s].value = runs.has(chosen[s]) ? chosen[s] : "";
    }
    const changed = SIDES.some(
      (s) => before.has(chosen[s]) && before.get(chosen[s]).status !== runs.get(chosen[s])?.status,
    );
    if (first || (changed && !earlier.length)) choose();
  }

  const node = h(
    "div",
    { class: "card", id: "compare" },
    h("h2", {}, "Two runs, item by item"),
    h(
      "div",
      { class: "compare-controls" },
      h("label", { class: "field" }, h("span", {}, "Run A"), selects.a),
      h("label", { class: "field" }, h("span", {}, "Run B"), selects.b),
      h("label", { class: "check" }, onlyDiffering, " only items that differ"),
      previous,
      next,
    ),
    message,
    note,
    table,
  );
  return {
    node,
    setRuns,
    dispose: () => {
      loading += 1; // a load still under way renders nothing
    },
  };
}
