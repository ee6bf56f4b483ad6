"""The web dashboard in a real browser: the whole demo flow a newcomer does without the SDK.

Sign in with the key, drop a training file, read the checker's report, create a job, watch its loss chart
grow without a reload, pause and resume it from its buttons (which follow the server's state machine),
try a checkpoint in the playground, cancel. Screenshots go to test-output/browser/ (`job-page.png` is the
one copied to docs/dashboard-job.png for the README).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import httpx
import pytest
from openai import OpenAI

from openft.api.dashboard.routes import status_actions
from openft.protocol.fine_tuning import FineTuningJob, JobHyperparameters
from tests.conftest import TINY_MODEL_NAME
from tests.support.data import jsonl_bytes, valid_examples
from tests.support.server import RunningServer
from tests.support.waiting import wait_for

if TYPE_CHECKING:
    from playwright.sync_api import Page, Route

pytestmark = [pytest.mark.browser, pytest.mark.e2e]
TRAINING = jsonl_bytes(valid_examples(24))  # 50 epochs of batch 1: 1200 steps, long enough to watch


def sign_in(page: Page, key: str) -> None:
    page.goto("/")
    page.fill("#api-key", key)
    page.click("#login")


def points(page: Page) -> int:
    """How many steps the loss chart holds (chart.js mirrors it in `data-points`)."""
    return int(page.get_attribute("#loss-chart", "data-points") or 0)


def valid_points(page: Page) -> int:
    """How many of those steps have a validation loss, sampled or full (`data-valid-points`)."""
    return int(page.get_attribute("#loss-chart", "data-valid-points") or 0)


def drop_file(page: Page, selector: str, name: str, content: bytes) -> None:
    """A real drop event carrying a File, as the OS would deliver when a file is dragged onto the zone."""
    transfer = page.evaluate_handle(
        """([name, text]) => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([text], name, {type: "application/jsonl"}));
            return transfer;
        }""",
        [name, content.decode()],
    )
    page.dispatch_event(selector, "drop", {"dataTransfer": transfer})


def enabled_actions(page: Page) -> set[str]:
    buttons = page.query_selector_all(".actions button[data-action]")
    return {b.get_attribute("data-action") or "" for b in buttons if b.is_enabled()}


def wait_status(page: Page, *statuses: str, timeout: float = 60) -> str:
    """The job page's status (`section.job[data-status]`), once it is one of `statuses`."""
    return wait_for(
        lambda: (s := page.get_attribute("section.job", "data-status")) in statuses and s,
        timeout=timeout,
        interval=0.1,
        what=f"job page status in {statuses}",
    )


def progress_label(page: Page, scope: str = "section.job .summary") -> str:
    return page.text_content(f"{scope} .progress-label") or ""


def has_data_check(server: RunningServer) -> bool:
    """The data checker (`GET /v1/files/{id}/check`) is asserted on only where the server has it."""
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    return any(path.startswith("/v1/files/") and path.endswith("/check") for path in paths)


def test_sign_in_keeps_the_key_and_refuses_a_wrong_one(page: Page, server: RunningServer) -> None:
    sign_in(page, "sk-openft-wrong")
    page.wait_for_selector("#login-status .error")
    assert "refused" in (page.text_content("#login-status") or "")
    sign_in(page, server.api_key)
    page.wait_for_selector("#jobs-table")
    page.reload()  # the key is kept in the browser: no second sign-in
    page.wait_for_selector("#jobs-table")
    assert page.evaluate("localStorage.getItem('openft.apiKey')") == server.api_key
    page.click("#logout")
    page.wait_for_selector("#api-key")


def test_server_strings_are_shown_as_text_never_as_markup(page: Page, client: OpenAI, server: RunningServer) -> None:
    name = "<img src=x id=pwned onerror=alert(1)><b>bold.jsonl"  # no "/": a file name keeps its last part
    assert client.files.create(file=(name, TRAINING), purpose="fine-tune").filename == name
    sign_in(page, server.api_key)
    page.wait_for_selector("#jobs-table")
    page.goto("/#/upload")
    page.wait_for_selector("#job-training-file option", state="attached")
    assert name in (page.text_content("#job-training-file") or "")
    assert page.query_selector("#pwned") is None


def test_demo_flow_upload_create_watch_pause_resume_playground(
    page: Page, client: OpenAI, server: RunningServer, screenshot: Callable[[str], Path]
) -> None:
    validation = client.files.create(file=("valid.jsonl", jsonl_bytes(valid_examples(8))), purpose="fine-tune")
    sign_in(page, server.api_key)
    page.wait_for_selector("#jobs-table")

    # upload by drag and drop, then the checker's report
    page.click("text=New job")
    page.wait_for_selector(f"#job-model option[value='{TINY_MODEL_NAME}']", state="attached")
    page.select_option("#job-model", TINY_MODEL_NAME)
    drop_file(page, "#dropzone", "zorblax.jsonl", TRAINING)
    page.wait_for_selector("#uploaded")
    uploaded = next(f for f in client.files.list(purpose="fine-tune") if f.filename == "zorblax.jsonl")
    assert page.input_value("#job-training-file") == uploaded.id
    report = wait_for(
        lambda: (
            (text := page.text_content("#check-report") or "")
            and ("zorblax.jsonl" in text or "No data" in text)
            and text
        ),
        timeout=30,
        what="the checker's report",
    )
    if has_data_check(server):
        assert page.get_attribute("#check-report .report", "data-ok") == "true", report
        assert "Examples24" in report.replace(" ", ""), report
    else:
        assert "No data check available" in report
    screenshot("upload")

    # create the job from the form
    page.select_option("#job-validation-file", validation.id)
    page.fill("#job-epochs", "50")
    page.fill("#job-batch", "1")
    page.fill("#job-suffix", "zorblax")
    page.click("#create-job")
    page.wait_for_selector("section.job")
    job_id = page.get_attribute("section.job", "data-job") or ""
    job = client.fine_tuning.jobs.retrieve(job_id)
    assert job.training_file == uploaded.id and job.validation_file == validation.id
    assert job.method.supervised.hyperparameters.n_epochs == 50  # type: ignore[union-attr]

    # the chart grows while the page stays the same document (no reload)
    page.evaluate("window.__sameDocument = true")
    wait_for(lambda: points(page) >= 5, timeout=90, interval=0.1, what="the first points on the chart")
    assert enabled_actions(page) == set(status_actions()["running"])
    first = points(page)
    wait_for(lambda: points(page) > first + 5, timeout=30, interval=0.1, what="the chart to grow")

    # pause from the button: only resume and cancel stay possible, and a checkpoint appears
    page.click("button[data-action=pause]")
    wait_status(page, "paused")
    wait_for(lambda: enabled_actions(page) == set(status_actions()["paused"]), timeout=5, what="paused buttons")
    page.wait_for_selector("#checkpoints")
    paused_at = points(page)
    time.sleep(1.5)
    assert points(page) == paused_at, "a paused job trains no more steps"
    paused = client.fine_tuning.jobs.retrieve(job_id).model_extra or {}  # the SDK keeps the extension fields here
    shown = f"{paused['completed_steps']} / {paused['total_steps']} steps"  # the page shows the job's own counts
    wait_for(lambda: shown in progress_label(page), timeout=5, what=f"'{shown}' on the job page")
    screenshot("job-paused")

    # resume from the button: training continues where it stopped
    page.click("button[data-action=resume]")
    wait_status(page, "queued", "running")
    wait_for(lambda: points(page) > paused_at + 30, timeout=90, interval=0.1, what="training after the resume")
    wait_for(lambda: valid_points(page) >= 1, timeout=60, interval=0.1, what="a validation loss")
    assert page.evaluate("window.__sameDocument") is True, "the page must update without reloading"
    screenshot("job-page")

    # the jobs list shows it running, with its progress
    page.click("text=Jobs")
    row = page.wait_for_selector(f"tr[data-job='{job_id}']")
    assert row is not None
    wait_for(lambda: "steps" in (row.text_content() or ""), timeout=10, what="progress in the jobs list")
    screenshot("jobs")

    # a checkpoint in the playground, side by side with the base model, streamed. The job is paused first: a
    # running job keeps only its newest checkpoints, so the one picked here could be rotated away (and answer
    # 404 model_not_found, rightly) between the click and the request.
    page.goto(f"/#/jobs/{job_id}")
    page.wait_for_selector("section.job[data-status]")
    page.click("button[data-action=pause]")
    wait_status(page, "paused")
    page.click("#checkpoints a.btn >> nth=0")
    page.wait_for_selector("#pg-tuned option", state="attached")
    checkpoint = page.input_value("#pg-tuned")
    assert ":ckpt-step-" in checkpoint and page.input_value("#pg-base") == TINY_MODEL_NAME
    page.fill("#pg-prompt", "Who makes the Zorblax Q7?")
    page.fill("#pg-max-tokens", "24")
    page.click("#pg-send")
    wait_for(
        lambda: page.eval_on_selector_all(".pane", "panes => panes.map(p => p.dataset.state)") == ["done", "done"],
        timeout=60,
        interval=0.1,
        what="both answers",
    )
    infos = page.eval_on_selector_all(".pane p.muted", "ps => ps.map(p => p.textContent)")
    assert all("chunks" in info for info in infos), infos
    screenshot("playground")

    # cancel from the button: nothing is possible afterwards
    page.goto(f"/#/jobs/{job_id}")
    page.wait_for_selector("section.job[data-status]")
    page.on("dialog", lambda dialog: dialog.accept())
    page.click("button[data-action=cancel]")
    wait_status(page, "cancelled")
    assert enabled_actions(page) == set()
    assert client.fine_tuning.jobs.retrieve(job_id).status == "cancelled"


CHECK_REPORT = {
    "object": "openft.data_check",
    "file": "file-x",
    "filename": "broken.jsonl",
    "method": "supervised",
    "model": TINY_MODEL_NAME,
    "ok": False,
    "problems": [
        {"line": 3, "code": "invalid_json", "message": "Line 3 is not JSON: <script>alert(1)</script>"},
        {"line": None, "code": "invalid_n_examples", "message": "Only 9 examples; at least 10 are needed"},
    ],
    "stats": {
        "examples": 9,
        "tokens": {"min": 20, "mean": 41.5, "max": 90},
        "total_tokens": 374,
        "over_context": 0,
        "context_length": 2048,
    },
    "auto": {"n_epochs": 11, "batch_size": 1, "learning_rate_multiplier": 1.0},
    "steps": 99,
    "estimate": {"seconds": 125.0, "tokens_per_second": 250.0, "source": "table", "device": "cpu"},
    "memory": {
        "fine_tuning_mode": "lora",
        "max_seq_length": 2048,
        "longest_sequence": 90,
        "micro_batch_size": 1,
        "gradient_checkpointing": False,
        "peak_bytes": 1_610_612_736,
        "device": "cpu",
        "available_bytes": 8 << 30,
        "fits": True,
        "fits_on": ["cpu", "24 GB", "80 GB"],
        "detail": "cpu, bf16: overhead 1.0 GiB, weights 275 MiB",
    },
}


def test_check_report_shows_problems_by_line_and_the_estimate(
    page: Page, server: RunningServer, screenshot: Callable[[str], Path]
) -> None:
    """The report's rendering, on the documented shape (answered by the test, whatever the data)."""
    page.route("**/v1/files/*/check*", lambda route: route.fulfill(json=CHECK_REPORT))
    sign_in(page, server.api_key)
    page.wait_for_selector("#jobs-table")
    page.goto("/#/upload")
    page.wait_for_selector(f"#job-model option[value='{TINY_MODEL_NAME}']", state="attached")
    drop_file(page, "#dropzone", "broken.jsonl", TRAINING)
    page.wait_for_selector("#check-report .report")
    assert page.get_attribute("#check-report .report", "data-ok") == "false"
    rows = page.eval_on_selector_all(
        "#check-report table.problems tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
    )
    assert rows == [[str(p["line"] or "—"), p["code"], p["message"]] for p in CHECK_REPORT["problems"]]
    report = page.text_content("#check-report") or ""
    assert "2 problem(s)" in report and "min 20, mean 41.5, max 90" in report
    assert "2 min 5 s" in report and "Steps99" in report.replace(" ", "")
    assert "~1.5 GiB peak (lora, sequences of up to 90 tokens, micro-batch 1) — fits on: cpu, 24 GB, 80 GB" in report
    assert page.query_selector("#check-report script") is None
    screenshot("check-report")


def _running_job_at_step_7_of_20() -> dict[str, Any]:
    """A running job whose newest metrics event (step 3) lags the job's own counts, as when its events are
    paged out of reach: progress must come from the job, not be rebuilt from the event."""
    return FineTuningJob(
        id="ftjob-progress",
        created_at=1_700_000_000,
        error=None,
        fine_tuned_model=None,
        finished_at=None,
        hyperparameters=JobHyperparameters(batch_size=2, learning_rate_multiplier=1.0, n_epochs=2),
        model=TINY_MODEL_NAME,
        organization_id="org-x",
        result_files=[],
        seed=1,
        status="running",
        trained_tokens=None,
        training_file="file-x",
        validation_file=None,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 2}}},
        completed_steps=7,
        total_steps=20,
    ).model_dump(mode="json")


def test_progress_is_the_jobs_own_step_counts(page: Page, server: RunningServer) -> None:
    """The jobs list and the job page show `completed_steps` / `total_steps` of the job object (answered by the
    test, with an older metrics event that says otherwise); the loss still comes from that event."""
    job = _running_job_at_step_7_of_20()
    metrics = {"step": 3, "total_steps": 20, "train_loss": 1.25}
    event = {"object": "fine_tuning.job.event", "id": "ftevent-1", "created_at": 1_700_000_100, "level": "info"}
    events = [event | {"message": "Step 3/20: training loss=1.2500", "type": "metrics", "data": metrics}]

    def answer(route: Route) -> None:
        path = urlparse(route.request.url).path.removeprefix("/v1/fine_tuning/jobs")
        if path == "":
            route.fulfill(json={"object": "list", "data": [job], "has_more": False})
        elif path == f"/{job['id']}":
            route.fulfill(json=job)
        elif path == f"/{job['id']}/events":
            route.fulfill(json={"object": "list", "data": events, "has_more": False})
        else:
            route.fulfill(json={"object": "list", "data": [], "has_more": False})

    page.route("**/v1/fine_tuning/jobs**", answer)
    sign_in(page, server.api_key)
    row = f"#jobs-table tr[data-job='{job['id']}']"
    page.wait_for_selector(row)
    assert progress_label(page, row) == "7 / 20 steps (35%)"
    page.goto(f"/#/jobs/{job['id']}")
    page.wait_for_selector("section.job[data-status=running]")
    assert progress_label(page) == "7 / 20 steps (35%)"
    wait_for(lambda: page.text_content("#chart-note") == "Step 7 of 20: train loss 1.2500", what="the chart note")
