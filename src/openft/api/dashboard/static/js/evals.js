// The evals list (#/evals): the key's evals, newest first, each linking to its runs side by side (eval.js).
// Read with GET /v1/evals as the SDKs do (`order`, `limit`, and `after` = the last id for the next page).

import { get } from "./api.js";
import { errorBox, h, replace, time } from "./dom.js";

const PAGE = 50;

export function evalsView() {
  const body = h("tbody", {}, h("tr", {}, h("td", { colspan: 4, class: "muted" }, "Loading…")));
  const message = h("div");
  const more = h("button", { type: "button", class: "btn", id: "evals-more", hidden: true }, "Load more");
  let after = null;
  let shown = 0;

  async function load() {
    more.disabled = true;
    try {
      const query = new URLSearchParams({ limit: String(PAGE), order: "desc" });
      if (after) query.set("after", after);
      const page = await get(`/evals?${query}`);
      if (!shown) replace(body);
      body.append(...page.data.map(row));
      shown += page.data.length;
      if (!shown) {
        replace(
          body,
          h("tr", {}, h("td", { colspan: 4, class: "muted" }, "No evals yet: create one with client.evals.create(…).")),
        );
      }
      after = page.last_id;
      more.hidden = !page.has_more;
      replace(message);
    } catch (error) {
      replace(message, errorBox(error.message));
    } finally {
      more.disabled = false;
    }
  }
  more.addEventListener("click", load);
  load();

  const table = h(
    "table",
    { class: "jobs", id: "evals-table" },
    h("thead", {}, h("tr", {}, ["Name", "Eval", "Testing criteria", "Created"].map((t) => h("th", {}, t)))),
    body,
  );
  const node = h("section", {}, h("div", { class: "title-row" }, h("h1", {}, "Evals")), message, table, more);
  return { node };
}

function row(evaluation) {
  const href = `#/evals/${encodeURIComponent(evaluation.id)}`;
  const criteria = evaluation.testing_criteria || [];
  return h(
    "tr",
    { "data-eval": evaluation.id },
    h("td", {}, h("a", { href }, evaluation.name || "(unnamed)")),
    h("td", { class: "mono nowrap" }, evaluation.id),
    h(
      "td",
      { class: "criteria-count", title: criteria.map((c) => `${c.name} (${c.type})`).join(", ") },
      String(criteria.length),
    ),
    h("td", {}, time(evaluation.created_at)),
  );
}
