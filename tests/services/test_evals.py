"""The Evals API's service and worker side: evals and their checks, runs checked before they are queued, a
jsonl run graded by the worker with exact pass/fail/error counts, the claim's fencing (a lost claim records
nothing, an item is never recorded twice), cancel, and one organization never seeing another's."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from openft.db import evals as eval_repo
from openft.db.engine import make_engine, make_session_factory
from openft.db.migrate import upgrade
from openft.db.tables import EvalRow, EvalRunItemRow, EvalRunRow
from openft.embeddings import LocalEmbedder
from openft.errors import InvalidRequest, NotFound
from openft.jobs.eval_runs import EvalRunRunner, parse_jsonl, passes
from openft.protocol.evals import CreateEvalRequest, CreateEvalRunRequest, UpdateEvalRequest
from openft.services.container import Container
from openft.services.evals import EvalItemSampler, EvalService
from openft.services.models import Caller
from openft.storage import LocalBlobStore
from tests.conftest import TINY_MODEL_NAME
from tests.support.evals import EXACT, ITEM_SCHEMA, qa_eval_fields
from tests.support.waiting import wait_for


def _service(container: Container) -> EvalService:
    assert container.evals is not None
    return container.evals


def _eval(service: EvalService, org: str, criteria: list[Any] | None = None, **config: Any) -> str:
    request = CreateEvalRequest(**qa_eval_fields("qa", criteria, **config), metadata={"team": "a"})
    return service.create(Caller.of(org), org, request).id


def _invalid(fn: Any, *args: Any, **kwargs: Any) -> str | None:
    with pytest.raises(InvalidRequest) as caught:
        fn(*args, **kwargs)
    return caught.value.param


def _jsonl_run(entries: list[dict[str, Any]]) -> CreateEvalRunRequest:
    return CreateEvalRunRequest(
        name="r", data_source={"type": "jsonl", "source": {"type": "file_content", "content": entries}}
    )


def _entry(answer: str, output: str) -> dict[str, Any]:
    return {"item": {"question": "q", "answer": answer}, "sample": {"output_text": output}}


def test_evals_are_created_checked_listed_updated_and_deleted(container: Container) -> None:
    service, org = _service(container), container.default_org_id
    created = service.retrieve(org, _eval(service, org))
    assert created.data_source_config["schema"]["properties"]["item"] == ITEM_SCHEMA
    assert created.data_source_config["schema"]["required"] == ["item", "sample"]
    assert created.testing_criteria == [EXACT] and created.metadata == {"team": "a"}

    def create(criteria: list[Any], **config: Any) -> None:
        _eval(service, org, criteria, **config)

    assert _invalid(create, [{**EXACT, "operation": "equals"}]) == "testing_criteria[0].operation"
    assert _invalid(create, [EXACT, {**EXACT, "type": "nope"}]) == "testing_criteria[1].type"
    assert _invalid(create, [EXACT, EXACT]) == "testing_criteria[1].name"
    assert _invalid(create, []) == "testing_criteria"
    assert _invalid(create, [{**EXACT, "type": "text_similarity", "evaluation_metric": "bleu"}]) == (
        "testing_criteria[0].pass_threshold"
    )
    judge = {"type": "label_model", "name": "j", "model": "no-such-model", "labels": ["a", "b"]}
    judge |= {"passing_labels": ["a"], "input": [{"role": "user", "content": "{{sample.output_text}}"}]}
    assert _invalid(create, [EXACT, judge]) == "testing_criteria[1].model"
    assert service.delete(org, _eval(service, org, [{**judge, "model": "tiny-llama"}])).deleted  # one it may use
    assert _invalid(create, [EXACT], type="logs") == "data_source_config.type"
    assert _invalid(create, [EXACT], type="stored_completions") == "data_source_config.type"
    assert _invalid(create, [EXACT], item_schema={"type": "nonsense"}) == "data_source_config.item_schema"
    remote = {"$ref": "http://127.0.0.1:9/schema.json"}  # never fetched: a 400
    assert _invalid(create, [EXACT], item_schema=remote) == "data_source_config.item_schema"

    second = _eval(service, org)
    assert [e.id for e in service.list(org, after=None, limit=10, order="asc", order_by="created_at").data] == [
        created.id,
        second,
    ]
    page = service.list(org, after=None, limit=1, order="desc", order_by="created_at")
    assert [e.id for e in page.data] == [second] and page.has_more
    assert [e.id for e in service.list(org, after=second, limit=5, order="desc", order_by="created_at").data] == [
        created.id
    ]
    updated = service.update(org, created.id, UpdateEvalRequest(name="renamed", metadata={"v": "2"}))
    assert (updated.name, updated.metadata) == ("renamed", {"v": "2"})
    assert service.delete(org, created.id).deleted
    with pytest.raises(NotFound):
        service.retrieve(org, created.id)


def test_a_cosine_criterion_needs_the_servers_embeddings_model(container: Container, models_dir: Path) -> None:
    org = container.default_org_id
    cosine = {**EXACT, "type": "text_similarity", "evaluation_metric": "cosine", "pass_threshold": 0.9}
    del cosine["operation"]
    assert _invalid(_eval, _service(container), org, [cosine]) == "testing_criteria[0].evaluation_metric"
    embed = LocalEmbedder(models_dir / TINY_MODEL_NAME)
    with_embeddings = EvalService(container.sessions, container.files, container.models, embed=embed)
    assert with_embeddings.retrieve(org, _eval(with_embeddings, org, [cosine])).testing_criteria == [cosine]


def test_runs_are_checked_before_they_are_queued(container: Container) -> None:
    service, org = _service(container), container.default_org_id
    eval_id = _eval(service, org)
    who = Caller.of(org)

    def run(data_source: dict[str, Any]) -> None:
        service.create_run(who, org, eval_id, CreateEvalRunRequest(data_source=data_source), base_url="http://x")

    content = {"type": "file_content", "content": [_entry("a", "a"), {"item": {"question": "q"}}]}
    assert _invalid(run, {"type": "jsonl", "source": content}) == "data_source.source.content[1].item"
    assert _invalid(run, {"type": "jsonl", "source": {"type": "file_content", "content": [{"x": 1}]}}) == (
        "data_source.source.content[0].item"
    )
    assert _invalid(run, {"type": "responses", "source": content}) == "data_source.type"
    assert _invalid(run, {"type": "jsonl", "source": {"type": "stored_completions"}}) == "data_source.source.type"
    completions = {
        "type": "completions",
        "model": "no-such-model",
        "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.question}}"}]},
        "source": {"type": "file_content", "content": [_entry("a", "a")]},
    }
    assert _invalid(run, completions) == "data_source.model"
    tiny = {**completions, "model": "tiny-llama"}
    bad_tag = {"type": "template", "template": [{"role": "user", "content": "{{sample.output_text}}"}]}
    assert _invalid(run, {**tiny, "input_messages": bad_tag}) == "data_source.input_messages.template[0].content"
    assert _invalid(run, {**tiny, "sampling_params": {"logprobs": True}}) == "data_source.sampling_params.logprobs"
    assert _invalid(run, {**tiny, "sampling_params": {"temperature": 9}}) == "data_source.sampling_params.temperature"
    with pytest.raises(NotFound):
        run({"type": "jsonl", "source": {"type": "file_id", "id": "file-nope"}})
    dangling = CreateEvalRequest(
        data_source_config={"type": "custom", "item_schema": {"$ref": "#/$defs/nope"}}, testing_criteria=[EXACT]
    )
    other = service.create(who, org, dangling).id
    source = {"type": "jsonl", "source": {"type": "file_content", "content": [_entry("a", "a")]}}
    assert _invalid(
        service.create_run, who, org, other, CreateEvalRunRequest(data_source=source), base_url="http://x"
    ) == ("data_source.source.content")
    assert service.list_runs(org, eval_id, after=None, limit=10, order="asc", status=None).data == []


def _upload(container: Container, content: bytes) -> str:
    assert isinstance(container.store, LocalBlobStore)
    writer = container.store.writer()
    writer.write(content)
    return container.files.create(container.default_org_id, purpose="evals", filename="e.jsonl", writer=writer).id


def _runner(container: Container, worker_id: str = "w") -> EvalRunRunner:
    assert container.graders is not None
    graders = container.graders
    return EvalRunRunner(
        container.sessions,
        container.files,
        lambda: EvalItemSampler(container.inference, container.models, graders),
        worker_id=worker_id,
        lease_seconds=5,
        concurrency=4,
    )


def test_a_jsonl_run_is_graded_by_the_worker_with_exact_counts(container: Container) -> None:
    service, org = _service(container), container.default_org_id
    raises = {
        "type": "python",
        "name": "raises",
        "source": "def grade(sample, item):\n    if item['answer'] == 'boom':\n        raise ValueError('x')\n"
        "    return 1.0\n",
    }
    eval_id = _eval(service, org, [EXACT, raises])
    entries = [_entry("a", "a"), _entry("b", "x"), _entry("c", "c"), _entry("boom", "boom"), _entry("d", "nope")]
    file_id = _upload(container, "".join(json.dumps(e) + "\n" for e in entries).encode())
    request = CreateEvalRunRequest(data_source={"type": "jsonl", "source": {"type": "file_id", "id": file_id}})
    run = service.create_run(Caller.of(org), org, eval_id, request, base_url="http://h/")
    assert run.status == "queued" and run.report_url == f"http://h/v1/evals/{eval_id}/runs/{run.id}"
    runner = _runner(container)
    runner.turn()
    wait_for(lambda: not runner.running(), timeout=120, interval=0.05, what="the run to be graded")
    runner.stop(timeout=10)
    done = service.retrieve_run(org, eval_id, run.id)
    assert done.status == "completed", done
    assert done.result_counts.model_dump() == {"total": 5, "errored": 1, "failed": 2, "passed": 2}
    assert [(c.testing_criteria, c.passed, c.failed) for c in done.per_testing_criteria_results] == [
        ("exact", 3, 2),
        ("raises", 4, 1),
    ]
    items = service.list_items(org, eval_id, run.id, after=None, limit=100, order="asc", status=None).data
    assert [i.status for i in items] == ["pass", "fail", "pass", "error", "fail"]
    assert [i.datasource_item_id for i in items] == [0, 1, 2, 3, 4]
    boom = items[3]
    assert [(r.name, r.score, r.passed) for r in boom.results] == [("exact", 1.0, True), ("raises", 0.0, False)]
    assert boom.results[1].sample is not None and "python_grader_runtime_error" in boom.results[1].sample["error"]
    passed = service.list_items(org, eval_id, run.id, after=None, limit=100, order="desc", status="pass").data
    assert [i.datasource_item_id for i in passed] == [2, 0]
    page = service.list_items(org, eval_id, run.id, after=items[1].id, limit=2, order="asc", status=None)
    assert [i.datasource_item_id for i in page.data] == [2, 3] and page.has_more
    assert service.retrieve_item(org, eval_id, run.id, items[1].id).datasource_item == entries[1]["item"]

    # another organization sees none of it
    with pytest.raises(NotFound):
        service.retrieve(org + "x", eval_id)
    with pytest.raises(NotFound):
        service.retrieve_run(org + "x", eval_id, run.id)
    with pytest.raises(NotFound):
        service.list_items(org + "x", eval_id, run.id, after=None, limit=10, order="asc", status=None)
    assert service.delete_run(org, eval_id, run.id).deleted
    with pytest.raises(NotFound):
        service.retrieve_item(org, eval_id, run.id, items[1].id)


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(database_url)
    upgrade(engine)
    yield make_session_factory(engine)
    engine.dispose()


def test_a_lost_claim_records_nothing_and_no_item_is_recorded_twice(sessions: sessionmaker[Session]) -> None:
    run_id = f"evalrun_{time.monotonic_ns()}"
    with sessions.begin() as session:
        session.add(
            EvalRow(
                id=f"eval_{run_id}",
                organization_id="org-1",
                name="e",
                data_source_config={},
                testing_criteria=[EXACT],
                created_at=0,
            )
        )
        session.flush()
        session.add(
            EvalRunRow(
                id=run_id,
                eval_id=f"eval_{run_id}",
                organization_id="org-1",
                name="r",
                status="queued",
                data_source={"type": "jsonl"},
                report_url="http://h",
                result_counts={"total": 0, "errored": 0, "failed": 0, "passed": 0},
                per_testing_criteria_results=[{"testing_criteria": "exact", "passed": 0, "failed": 0}],
                per_model_usage={},
                created_at=0,
                attempt=0,
            )
        )

    def item(index: int, status: str) -> EvalRunItemRow:
        record = {"datasource_item": {}, "results": [{"passed": status == "pass"}], "sample": {}}
        return EvalRunItemRow(
            id=f"outputitem_{run_id}_{index}{status}",
            run_id=run_id,
            item_index=index,
            status=status,
            record=record,
            created_at=0,
        )

    with sessions.begin() as session:
        first = eval_repo.claim_run(session, worker_id="a", lease_seconds=0.2)
        assert first is not None and first.id == run_id
        attempt = first.attempt
        assert eval_repo.claim_run(session, worker_id="b", lease_seconds=5) is None  # held
    with sessions.begin() as session:
        assert eval_repo.record_items(session, run_id, attempt, [item(0, "pass")])
    with sessions.begin() as session:
        assert eval_repo.record_items(session, run_id, attempt, [item(0, "fail")])  # a repeat is skipped
    time.sleep(0.3)  # a's lease runs out: b takes the run over
    with sessions.begin() as session:
        second = eval_repo.claim_run(session, worker_id="b", lease_seconds=5)
        assert second is not None and second.attempt == attempt + 1
    with sessions.begin() as session:
        assert eval_repo.renew_lease(session, run_id, attempt, 5) is None
        assert not eval_repo.record_items(session, run_id, attempt, [item(1, "pass")])
        assert not eval_repo.set_fenced(session, run_id, attempt, only_status=("queued",), status="completed")
        assert eval_repo.graded_indexes(session, run_id) == {0}
    with sessions.begin() as session:
        assert eval_repo.record_items(session, run_id, attempt + 1, [item(1, "fail")])
        row = eval_repo.get_run(session, "org-1", None, run_id)
        assert row is not None
        assert row.result_counts == {"total": 2, "errored": 0, "failed": 1, "passed": 1}
        assert row.per_testing_criteria_results == [{"testing_criteria": "exact", "passed": 1, "failed": 1}]


def test_a_cancelled_run_stays_cancelled(container: Container) -> None:
    service, org = _service(container), container.default_org_id
    eval_id = _eval(service, org)
    run = service.create_run(Caller.of(org), org, eval_id, _jsonl_run([_entry("a", "a")]), base_url="http://h")
    assert service.cancel_run(org, eval_id, run.id).status == "canceled"
    runner = _runner(container)
    runner.turn()  # nothing to claim
    assert not runner.running()
    assert service.retrieve_run(org, eval_id, run.id).status == "canceled"
    listed = service.list_runs(org, eval_id, after=None, limit=5, order="asc", status="canceled").data
    assert [r.id for r in listed] == [run.id]


def test_pass_thresholds_and_file_lines() -> None:
    assert passes({"type": "string_check"}, 1.0) and not passes({"type": "string_check"}, 0.0)
    assert passes({"type": "text_similarity", "pass_threshold": 0.5}, 0.6)
    assert not passes({"type": "score_model", "range": [0, 10]}, 9) and passes({"type": "score_model"}, 1)
    with pytest.raises(InvalidRequest, match="Line 2"):
        parse_jsonl(b'{"item": {}}\n{"x": 1}\n', "data_source.source.id")
    assert [i.index for i in parse_jsonl(b'{"item": {}}\n\n{"item": {"a": 1}}\n', "p")] == [0, 1]
