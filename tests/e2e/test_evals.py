"""The Evals API end to end through the official SDK, on a real server whose worker carries out the runs:
evals' CRUD, a jsonl run graded with exact pass/fail counts, a completions run sampling the tiny model (each
sample equal to the same chat request sent alone), and a worker killed mid-run that repeats no item. Every
answer is checked against OpenAI's schemas."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from openai import BadRequestError, NotFoundError, OpenAI

from tests.conftest import TINY_MODEL_NAME
from tests.e2e.conftest import make_client
from tests.support import openapi_schemas
from tests.support.evals import CONTAINS, EXACT, qa_eval_fields
from tests.support.server import RunningServer, start_server
from tests.support.waiting import wait_for
from tests.support.workers import start_worker

FINAL = {"completed", "failed", "canceled"}


def _eval(client: OpenAI, criteria: list[dict[str, Any]] | None = None, **extra: Any) -> Any:
    raw = client.evals.with_raw_response.create(**qa_eval_fields("qa", criteria), **extra)
    openapi_schemas.validate(raw.http_response.json(), "Eval")
    return raw.parse()


def _finished(client: OpenAI, eval_id: str, run_id: str, timeout: float = 240) -> Any:
    return wait_for(
        lambda: (r := client.evals.runs.retrieve(run_id, eval_id=eval_id)).status in FINAL and r,
        timeout=timeout,
        interval=0.2,
        what=f"run {run_id} to finish",
    )


def _check_run(client: OpenAI, eval_id: str, run_id: str) -> None:
    raw = client.evals.runs.with_raw_response.retrieve(run_id, eval_id=eval_id).http_response.json()
    openapi_schemas.validate(raw, "EvalRun")


def _items(client: OpenAI, eval_id: str, run_id: str, **query: Any) -> list[Any]:
    raw = client.evals.runs.output_items.with_raw_response.list(run_id, eval_id=eval_id, limit=100, **query)
    openapi_schemas.validate(raw.http_response.json(), "EvalRunOutputItemList")
    return list(raw.parse().data)


def test_evals_are_created_listed_updated_and_deleted(server: RunningServer) -> None:
    client = make_client(server, "openai")
    first = _eval(client, metadata={"team": "a"})
    second = _eval(client)
    assert first.data_source_config.type == "custom" and first.metadata == {"team": "a"}
    listed = client.evals.with_raw_response.list(limit=100, order="asc").http_response.json()
    openapi_schemas.validate(listed, "EvalList")
    ids = [e["id"] for e in listed["data"]]
    assert ids.index(first.id) < ids.index(second.id)
    assert client.evals.list(limit=1, order="desc").data[0].id == second.id
    updated = client.evals.with_raw_response.update(first.id, name="renamed", metadata={"v": "2"})
    openapi_schemas.validate(updated.http_response.json(), "Eval")
    assert (updated.parse().name, updated.parse().metadata) == ("renamed", {"v": "2"})
    azure = make_client(server, "azure-dated")  # the same router under /openai, as every resource
    assert azure.evals.retrieve(first.id).name == "renamed"
    with pytest.raises(BadRequestError) as bad:
        _eval(client, [{**EXACT, "operation": "equals"}])
    assert bad.value.body["param"] == "testing_criteria[0].operation"  # type: ignore[index]
    with pytest.raises(BadRequestError) as bad:
        client.evals.create(
            data_source_config={"type": "logs"},
            testing_criteria=[EXACT],  # type: ignore[list-item]
        )
    assert bad.value.body["param"] == "data_source_config.type"  # type: ignore[index]
    deleted = client.evals.delete(first.id)
    assert deleted.deleted and deleted.eval_id == first.id
    with pytest.raises(NotFoundError):
        client.evals.retrieve(first.id)


def test_a_jsonl_run_is_graded_with_exact_counts(server: RunningServer) -> None:
    client = make_client(server, "openai")
    evaluation = _eval(client, [EXACT, CONTAINS])
    outputs = ["Paris", "paris!", "Rome", "Oslo", "Bern", "nope"]
    answers = ["Paris", "Paris", "Rome", "Lima", "Bern", "Kyiv"]
    content = [
        {"item": {"question": f"q{i}", "answer": a}, "sample": {"output_text": o}}
        for i, (o, a) in enumerate(zip(outputs, answers, strict=True))
    ]
    with pytest.raises(BadRequestError) as bad:
        client.evals.runs.create(
            evaluation.id,
            data_source={
                "type": "jsonl",
                "source": {"type": "file_content", "content": [*content, {"item": {"question": "no answer"}}]},
            },
        )
    assert bad.value.body["param"] == "data_source.source.content[6].item"  # type: ignore[index]
    raw = client.evals.runs.with_raw_response.create(
        evaluation.id,
        name="capitals",
        metadata={"k": "v"},
        data_source={"type": "jsonl", "source": {"type": "file_content", "content": content}},
    )
    openapi_schemas.validate(raw.http_response.json(), "EvalRun")
    run = raw.parse()
    assert run.status in {"queued", "in_progress"} and run.name == "capitals"
    done = _finished(client, evaluation.id, run.id)
    _check_run(client, evaluation.id, run.id)
    assert done.status == "completed", done
    # items 0, 2, 4 pass both criteria; item 1 passes only `contains` ("Paris" is in "paris!", any case)
    assert (done.result_counts.total, done.result_counts.errored) == (6, 0)
    assert (done.result_counts.passed, done.result_counts.failed) == (3, 3)
    per = {c.testing_criteria: (c.passed, c.failed) for c in done.per_testing_criteria_results}
    assert per == {"exact": (3, 3), "contains": (4, 2)}
    items = _items(client, evaluation.id, run.id)
    assert [i.datasource_item_id for i in items] == list(range(6))
    assert [i.status for i in items] == ["pass", "fail", "pass", "fail", "pass", "fail"]
    assert items[3].datasource_item == content[3]["item"]
    assert [(r.name, r.passed) for r in items[0].results] == [("exact", True), ("contains", True)]
    passed = _items(client, evaluation.id, run.id, status="pass", order="desc")
    assert [i.datasource_item_id for i in passed] == [4, 2, 0]
    one = client.evals.runs.output_items.with_raw_response.retrieve(items[2].id, eval_id=evaluation.id, run_id=run.id)
    openapi_schemas.validate(one.http_response.json(), "EvalRunOutputItem")
    assert one.parse().sample.output[0].content == "Rome"

    runs = client.evals.runs.with_raw_response.list(evaluation.id, status="completed").http_response.json()
    openapi_schemas.validate(runs, "EvalRunList")
    assert [r["id"] for r in runs["data"]] == [run.id]
    assert client.evals.runs.delete(run.id, eval_id=evaluation.id).deleted
    with pytest.raises(NotFoundError):
        client.evals.runs.retrieve(run.id, eval_id=evaluation.id)


def _completions_source(model: str, content: list[dict[str, Any]], max_tokens: int = 6) -> dict[str, Any]:
    return {
        "type": "completions",
        "model": model,
        "input_messages": {
            "type": "template",
            "template": [
                # OpenAI's EvalItem form (content parts): a plain {"role", "content": str} message matches both
                # of the schema's oneOf alternatives, so a run echoing it could not be checked against it
                {"type": "message", "role": "system", "content": {"type": "input_text", "text": "Answer briefly."}},
                {"type": "message", "role": "user", "content": {"type": "input_text", "text": "{{item.question}}"}},
            ],
        },
        "sampling_params": {"temperature": 0, "max_completion_tokens": max_tokens, "seed": 7},
        "source": {"type": "file_content", "content": content},
    }


def test_a_completions_run_samples_the_model_as_chat_would(server: RunningServer) -> None:
    client = make_client(server, "openai")
    questions = [f"Count to {i}:" for i in range(6)]
    alone = [
        client.chat.completions.create(
            model=TINY_MODEL_NAME,
            messages=[{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": q}],
            temperature=0,
            max_completion_tokens=6,
            seed=7,
        )
        .choices[0]
        .message.content
        or ""
        for q in questions
    ]
    # the first four expect the model's own answer (pass); the last two something it did not say (fail)
    answers = [*alone[:4], "not this", "nor this"]
    content = [{"item": {"question": q, "answer": a}} for q, a in zip(questions, answers, strict=True)]
    evaluation = _eval(client, [EXACT])
    started = time.monotonic()
    run = client.evals.runs.create(evaluation.id, data_source=_completions_source(TINY_MODEL_NAME, content))  # type: ignore[arg-type]
    assert run.model == TINY_MODEL_NAME
    done = _finished(client, evaluation.id, run.id)
    seconds = time.monotonic() - started
    _check_run(client, evaluation.id, run.id)
    assert done.status == "completed", done
    assert (done.result_counts.total, done.result_counts.passed, done.result_counts.failed) == (6, 4, 2)
    assert done.per_model_usage and done.per_model_usage[0].model_name == TINY_MODEL_NAME
    assert done.per_model_usage[0].invocation_count == 6
    items = _items(client, evaluation.id, run.id)
    for item, expected in zip(items, alone, strict=True):
        assert item.sample.output[0].content == expected
        assert item.sample.input[1].content == item.datasource_item["question"]
        assert (item.sample.temperature, item.sample.max_completion_tokens, item.sample.seed) == (0, 6, 7)
        assert item.sample.usage.completion_tokens <= 6 and item.sample.error is None
    print(f"\n6-item completions run: {seconds:.1f} s from create to completed")

    # `item_reference`: each item brings its own conversation
    conversation = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": questions[0]}]
    source = _completions_source(TINY_MODEL_NAME, [{"item": {**content[0]["item"], "messages": conversation}}])
    source["input_messages"] = {"type": "item_reference", "item_reference": "item.messages"}
    referenced = _finished(client, evaluation.id, client.evals.runs.create(evaluation.id, data_source=source).id)  # type: ignore[arg-type]
    assert referenced.status == "completed" and referenced.result_counts.passed == 1
    (item,) = _items(client, evaluation.id, referenced.id)
    assert [(m.role, m.content) for m in item.sample.input] == [(m["role"], m["content"]) for m in conversation]
    assert item.sample.output[0].content == alone[0]

    with pytest.raises(BadRequestError) as bad:
        client.evals.runs.create(evaluation.id, data_source=_completions_source("no-such-model", content))  # type: ignore[arg-type]
    assert bad.value.body["param"] == "data_source.model"  # type: ignore[index]
    missing = [{"item": {"question": "q", "answer": "a"}}]
    source = _completions_source(TINY_MODEL_NAME, missing)
    source["input_messages"]["template"][1]["content"]["text"] = "{{item.nope}}"
    errored = _finished(client, evaluation.id, client.evals.runs.create(evaluation.id, data_source=source).id)  # type: ignore[arg-type]
    assert errored.status == "completed" and errored.result_counts.errored == 1
    (item,) = _items(client, evaluation.id, errored.id)
    assert item.status == "error" and item.sample.error is not None and "item.nope" in item.sample.error.message


def test_a_cancelled_run_keeps_what_was_graded(server: RunningServer) -> None:
    client = make_client(server, "openai")
    evaluation = _eval(client, [{**EXACT, "operation": "ne", "reference": "never"}])
    n = 300
    content = [{"item": {"question": f"Count to {i % 20}:", "answer": ""}} for i in range(n)]
    run = client.evals.runs.create(
        evaluation.id,
        data_source=_completions_source(TINY_MODEL_NAME, content, max_tokens=16),  # type: ignore[arg-type]
    )
    wait_for(
        lambda: client.evals.runs.retrieve(run.id, eval_id=evaluation.id).result_counts.total >= 3,
        timeout=120,
        interval=0.1,
        what="a few graded items",
    )
    canceled = client.evals.runs.cancel(run.id, eval_id=evaluation.id)
    assert canceled.status == "canceled"

    def settled() -> Any:
        """The worker reads the cancel at its next lease renewal; the items in flight are still recorded."""
        before = client.evals.runs.retrieve(run.id, eval_id=evaluation.id).result_counts.total
        time.sleep(1.0)
        after = client.evals.runs.retrieve(run.id, eval_id=evaluation.id)
        return after.result_counts.total == before and after

    after = wait_for(settled, timeout=60, interval=0.1, what="no more items graded")
    assert after.status == "canceled" and after.result_counts.total < n
    assert len(_items(client, evaluation.id, run.id)) == min(100, after.result_counts.total)


def test_a_judge_model_grades_in_the_worker(server: RunningServer) -> None:
    """A score_model criterion's judge is an openft model, asked from the worker's own event loop."""
    client = make_client(server, "openai")
    judge = {
        "type": "score_model",
        "name": "judge",
        "model": TINY_MODEL_NAME,
        "input": [{"role": "user", "content": "Score 0 to 1: {{sample.output_text}}"}],
        "sampling_params": {"temperature": 0, "max_completions_tokens": 4},
        "pass_threshold": 0.5,
    }
    evaluation = _eval(client, [EXACT, judge])
    content = [{"item": {"question": "q", "answer": f"a{i}"}, "sample": {"output_text": f"a{i}"}} for i in range(3)]
    source = {"type": "jsonl", "source": {"type": "file_content", "content": content}}
    done = _finished(client, evaluation.id, client.evals.runs.create(evaluation.id, data_source=source).id)  # type: ignore[arg-type]
    _check_run(client, evaluation.id, done.id)
    assert done.status == "completed" and done.result_counts.total == 3
    (usage,) = done.per_model_usage
    assert (usage.model_name, usage.invocation_count) == (TINY_MODEL_NAME, 3) and usage.completion_tokens > 0
    for item in _items(client, evaluation.id, done.id):
        exact, scored = item.results
        assert exact.passed and scored.name == "judge"
        # the tiny model answers noise: a parse error (errored) or a score; either way the criterion ran
        assert item.status in {"pass", "fail", "error"} and (item.status == "error") == (scored.sample is not None)


def test_another_organization_sees_none_of_it(server: RunningServer) -> None:
    client = make_client(server, "openai")
    evaluation = _eval(client)
    content = [{"item": {"question": "q", "answer": "a"}, "sample": {"output_text": "a"}}]
    source = {"type": "jsonl", "source": {"type": "file_content", "content": content}}
    run = _finished(client, evaluation.id, client.evals.runs.create(evaluation.id, data_source=source).id)  # type: ignore[arg-type]
    (item,) = _items(client, evaluation.id, run.id)
    command = [sys.executable, "-m", "openft", "keys", "create", "--org", "evals-b", "--json"]
    made = subprocess.run([*command, "--data-dir", str(server.data_dir)], capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    other = OpenAI(base_url=f"{server.url}/v1", api_key=json.loads(made.stdout)["key"], max_retries=0)
    assert evaluation.id not in [e.id for e in other.evals.list(limit=100).data]
    for call in (
        lambda: other.evals.retrieve(evaluation.id),
        lambda: other.evals.update(evaluation.id, name="mine"),
        lambda: other.evals.delete(evaluation.id),
        lambda: other.evals.runs.list(evaluation.id),
        lambda: other.evals.runs.create(evaluation.id, data_source=source),  # type: ignore[arg-type]
        lambda: other.evals.runs.retrieve(run.id, eval_id=evaluation.id),
        lambda: other.evals.runs.cancel(run.id, eval_id=evaluation.id),
        lambda: other.evals.runs.delete(run.id, eval_id=evaluation.id),
        lambda: other.evals.runs.output_items.list(run.id, eval_id=evaluation.id),
        lambda: other.evals.runs.output_items.retrieve(item.id, eval_id=evaluation.id, run_id=run.id),
    ):
        with pytest.raises(NotFoundError):
            call()
    assert client.evals.retrieve(evaluation.id).name == "qa"  # untouched
    assert client.evals.runs.retrieve(run.id, eval_id=evaluation.id).status == "completed"


def test_a_worker_killed_mid_run_repeats_no_item(tmp_path: Path, models_dir: Path) -> None:
    data_dir = tmp_path / "data"
    env = {"OPENFT_LEASE_SECONDS": "3"}
    server = start_server(data_dir, models_dir, extra_env=env, extra_args=["--no-worker"])
    workers = []
    try:
        client = make_client(server, "openai")
        evaluation = _eval(client, [{**EXACT, "operation": "ne", "reference": "never"}])
        n = 120
        lines = "".join(
            json.dumps({"item": {"question": f"Count to {i % 20}:", "answer": ""}}) + "\n" for i in range(n)
        )
        file_id = client.files.create(file=("items.jsonl", lines.encode()), purpose="evals").id
        source = _completions_source(TINY_MODEL_NAME, [], max_tokens=12)
        source["source"] = {"type": "file_id", "id": file_id}
        run = client.evals.runs.create(evaluation.id, data_source=source)  # type: ignore[arg-type]
        time.sleep(1.0)
        assert client.evals.runs.retrieve(run.id, eval_id=evaluation.id).status == "queued"  # no worker yet
        workers.append(start_worker(data_dir, models_dir, "w1", extra_env=env))
        wait_for(
            lambda: client.evals.runs.retrieve(run.id, eval_id=evaluation.id).result_counts.total >= 15,
            timeout=180,
            interval=0.2,
            what="15 graded items",
        )
        workers[0].kill()
        killed_at = client.evals.runs.retrieve(run.id, eval_id=evaluation.id).result_counts.total
        assert killed_at < n
        workers.append(start_worker(data_dir, models_dir, "w2", extra_env=env))
        done = _finished(client, evaluation.id, run.id)
        assert done.status == "completed" and done.result_counts.total == n == done.result_counts.passed
        page = client.evals.runs.output_items.list(run.id, eval_id=evaluation.id, limit=100)
        rest = client.evals.runs.output_items.list(run.id, eval_id=evaluation.id, limit=100, after=page.data[-1].id)
        assert page.has_more and not rest.has_more
        seen = [i.datasource_item_id for i in [*page.data, *rest.data]]
        assert sorted(seen) == list(range(n))  # each item once
        print(f"\nkilled after {killed_at} items; the second worker graded the rest")
    finally:
        for worker in workers:
            worker.kill()
        server.stop()
