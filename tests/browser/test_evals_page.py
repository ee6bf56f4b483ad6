"""The dashboard's Evals page in a real browser, against a real server whose worker grades the runs.

An eval with two string_check criteria and two `jsonl` runs of the same items (a "base" that answers a quarter
right, a "tuned" that answers most right, one answer being markup), made through the official SDK: the list
shows the eval; its page shows the runs side by side with the pass rates and result counts the API reports,
the better run highlighted, read again while a run is in progress (the test answers the first listing of the
runs as in progress: the worker grades 130 given samples faster than a page loads); the two runs' output items
side by side by `datasource_item_id`, paged at 100, with the differing answers shown as text.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from openai import OpenAI

from tests.browser.test_dashboard import sign_in
from tests.support.evals import CONTAINS, EXACT, qa_eval_fields
from tests.support.server import RunningServer
from tests.support.waiting import wait_for

if TYPE_CHECKING:
    from playwright.sync_api import Page, Route

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

MARKUP = "<img src=x id=pwned onerror=alert(1)>"
ITEMS = 130  # more than a page (100) of output items
RUNS_REQUEST = re.compile(r"/v1/evals/[^/]+/runs\?")


def base_output(i: int) -> str:
    return f"A{i}" if i % 4 == 0 else "no idea"


def tuned_output(i: int) -> str:
    if i == 1:
        return f"{MARKUP}<b>a1</b>"  # contains the answer (any case), not equal to it
    return "nope" if i % 10 == 3 else f"A{i}"


def question(i: int) -> str:
    return f"<i>q{i}</i>" if i == 2 else f"q{i}"  # markup in an item, shown as JSON text


def content(output: Callable[[int], str]) -> list[dict[str, Any]]:
    return [
        {"item": {"question": question(i), "answer": f"A{i}"}, "sample": {"output_text": output(i)}}
        for i in range(ITEMS)
    ]


def completed(client: OpenAI, eval_id: str, run_id: str) -> Any:
    def check() -> Any:
        run = client.evals.runs.retrieve(run_id, eval_id=eval_id)
        assert run.status in ("queued", "in_progress", "completed"), run
        return run.status == "completed" and run

    return wait_for(check, timeout=60, interval=0.1, what=f"run {run_id} to complete")


def run_cells(page: Page, row: str) -> dict[str, dict[str, Any]]:
    """The runs table's row `row` (`criterion-0`, `passed`, …): per run id, its text and whether it is best."""
    return {
        cell["run"]: cell
        for cell in page.eval_on_selector_all(
            f"#runs-table tr[data-row='{row}'] td",
            "tds => tds.map(td => ({run: td.dataset.run, text: td.textContent, best: td.classList.contains('best')}))",
        )
    }


def item_row(page: Page, item: int) -> dict[str, Any]:
    return page.eval_on_selector(
        f"#items-table tr[data-item='{item}']",
        """tr => ({
            differs: tr.classList.contains("differs"),
            item: tr.querySelector("pre.item").textContent,
            outputs: [...tr.querySelectorAll("td[data-side] pre.output")].map(p => p.textContent),
            verdicts: [...tr.querySelectorAll("td[data-side] [data-verdict]")].map(v => v.dataset.verdict),
            passed: [...tr.querySelectorAll("td[data-side]")].map(td =>
                [...td.querySelectorAll("li[data-criterion]")].map(li => [li.dataset.criterion, li.dataset.passed])),
        })""",
    )


def shown_items(page: Page) -> list[int]:
    return [int(i) for i in page.eval_on_selector_all("#items-table tbody tr", "trs => trs.map(t => t.dataset.item)")]


def test_runs_side_by_side_and_their_items_by_datasource_item(
    page: Page, client: OpenAI, server: RunningServer, screenshot: Callable[[str], Path]
) -> None:
    evaluation = client.evals.create(**qa_eval_fields(f"capitals {MARKUP}", [EXACT, CONTAINS]))
    runs = [
        client.evals.runs.create(
            evaluation.id,
            name=name,
            data_source={"type": "jsonl", "source": {"type": "file_content", "content": content(output)}},
        )
        for name, output in (("base <b>run</b>", base_output), ("tuned", tuned_output))
    ]
    done = [completed(client, evaluation.id, run.id) for run in runs]
    base, tuned = done
    # the API's counts, checked against the data once; the page is then checked against the API
    assert (base.result_counts.passed, base.result_counts.total) == (len(range(0, ITEMS, 4)), ITEMS)
    assert tuned.result_counts.passed == ITEMS - len(range(3, ITEMS, 10)) - 1

    # the first listing of the runs says both are still in progress (as one read mid-grading would): the page
    # shows that, keeps reading, and shows the completed runs without a reload
    held: list[str] = []

    def in_progress_once(route: Route) -> None:
        if held:
            route.continue_()
            return
        response = route.fetch()
        body = response.json()
        for run in body["data"]:
            run["status"] = "in_progress"
            run["result_counts"] = {"total": 0, "errored": 0, "failed": 0, "passed": 0}
            for criterion in run["per_testing_criteria_results"]:
                criterion.update(passed=0, failed=0)
        held.append(route.request.url)
        route.fulfill(response=response, json=body)

    page.route(RUNS_REQUEST, in_progress_once)
    sign_in(page, server.api_key)
    page.wait_for_selector("#jobs-table")
    page.click("#nav a[data-nav='evals']")
    listed = page.locator(f"#evals-table tr[data-eval='{evaluation.id}']")
    listed.wait_for()
    assert listed.locator("td").nth(0).text_content() == evaluation.name  # markup in a name stays text
    assert listed.locator("td.criteria-count").text_content() == "2"
    listed.locator("a").click()

    page.wait_for_selector(f"#runs-table th.run[data-run='{tuned.id}'][data-status='in_progress']")
    assert "refreshed every 2 s" in (page.text_content("#runs-note") or "")
    page.wait_for_selector(f"#runs-table th.run[data-run='{tuned.id}'][data-status='completed']", timeout=10_000)
    assert page.get_attribute(f"th.run[data-run='{base.id}']", "data-status") == "completed"
    assert page.text_content("#runs-note") == ""
    assert len(held) == 1
    assert page.text_content("#eval-criteria") == "exact (string_check), contains (string_check)"
    headers = page.eval_on_selector_all("#runs-table th.run", "ths => ths.map(th => th.dataset.run)")
    assert headers == [base.id, tuned.id], "one column per run, oldest first"
    assert base.name in (page.text_content(f"th.run[data-run='{base.id}'] .run-name") or "")

    for index, name in enumerate(("exact", "contains")):
        cells = run_cells(page, f"criterion-{index}")
        for run in done:
            result = run.per_testing_criteria_results[index]
            assert result.testing_criteria == name
            graded = result.passed + result.failed
            assert cells[run.id]["text"] == f"{100 * result.passed / graded:.1f}%{result.passed} / {graded}", name
        assert (cells[tuned.id]["best"], cells[base.id]["best"]) == (True, False)
    for field in ("passed", "failed", "errored", "total"):
        cells = run_cells(page, field)
        assert [cells[run.id]["text"] for run in done] == [str(getattr(run.result_counts, field)) for run in done]
    assert run_cells(page, "passed")[tuned.id]["best"] and run_cells(page, "failed")[tuned.id]["best"]
    assert not any(cell["best"] for cell in run_cells(page, "total").values()), "the same total: no best"

    # two runs: the two columns are chosen at first (and kept in the URL); items side by side by datasource id
    assert (page.input_value("#cmp-a"), page.input_value("#cmp-b")) == (base.id, tuned.id)
    page.wait_for_selector("#items-table tr[data-item='0']")
    assert f"a={base.id}" in page.url and f"b={tuned.id}" in page.url
    assert shown_items(page) == list(range(100)), "a page is at most 100 items per run"
    assert "More follow" in (page.text_content("#cmp-note") or "")
    same = item_row(page, 0)
    assert same["outputs"] == ["A0", "A0"] and not same["differs"]
    marked = item_row(page, 1)
    assert marked["differs"] and marked["outputs"] == ["no idea", f"{MARKUP}<b>a1</b>"]
    assert marked["verdicts"] == ["fail", "fail"]  # tuned passes `contains` only: not every criterion
    assert marked["passed"] == [[["exact", "false"], ["contains", "false"]], [["exact", "false"], ["contains", "true"]]]
    assert "<i>q2</i>" in item_row(page, 2)["item"]
    assert page.query_selector("#pwned") is None and page.query_selector("#items-table b, #items-table i") is None
    assert page.query_selector("#runs-table b") is None and page.query_selector("h1 img") is None
    differing = [i for i in range(100) if base_output(i) != tuned_output(i)]
    assert f"{len(differing)} differ" in (page.text_content("#cmp-note") or "")
    page.check("#cmp-differing")
    assert shown_items(page) == differing
    page.uncheck("#cmp-differing")

    page.click("#cmp-next")
    wait_for(lambda: shown_items(page) == list(range(100, ITEMS)), timeout=10, what="the second page of items")
    assert page.is_disabled("#cmp-next") and "More follow" not in (page.text_content("#cmp-note") or "")
    assert item_row(page, 103)["outputs"] == ["no idea", "nope"]
    screenshot("eval-page")
    page.click("#cmp-previous")
    wait_for(lambda: shown_items(page) == list(range(100)), timeout=10, what="the first page again")

    # choosing: the same run twice compares nothing; the choice survives a reload
    page.select_option("#cmp-b", base.id)
    assert page.is_hidden("#items-table") and "two different runs" in (page.text_content("#cmp-note") or "")
    page.select_option("#cmp-a", tuned.id)
    page.wait_for_selector("#items-table tr[data-item='1']")
    assert item_row(page, 1)["outputs"] == [f"{MARKUP}<b>a1</b>", "no idea"]
    page.reload()
    page.wait_for_selector("#items-table tr[data-item='1']")
    assert (page.input_value("#cmp-a"), page.input_value("#cmp-b")) == (tuned.id, base.id)
