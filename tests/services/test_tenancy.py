"""Tenancy in the services: another organization's file, job, events, checkpoints and models are the same
404 as ids nobody made; admin scope (`None`) sees every organization; projects are recorded."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from openft.db.tables import CheckpointRow, FileRow, JobRow
from openft.errors import InvalidRequest, ModelNotFound, NotFound
from openft.protocol.chat import ChatCompletionRequest
from openft.protocol.completions import CompletionRequest
from openft.protocol.fine_tuning import FineTuningJobCreate
from openft.services.auth import ensure_organization
from openft.services.container import Container
from openft.storage import LocalBlobStore
from tests.conftest import TINY_MODEL_NAME
from tests.support.data import jsonl_bytes, valid_examples


def _upload(container: Container, org_id: str, project: str | None) -> str:
    assert isinstance(container.store, LocalBlobStore)
    writer = container.store.writer()
    writer.write(jsonl_bytes(valid_examples(12)))
    return container.files.create(org_id, purpose="fine-tune", filename="t.jsonl", writer=writer, project=project).id


def _succeed(container: Container, job_id: str, folder: Path) -> tuple[str, str]:
    """Mark a job succeeded with a model folder and one checkpoint, as the worker would (no training)."""
    (folder / "model").mkdir(parents=True)
    (folder / "ckpt" / "adapter").mkdir(parents=True)
    with container.sessions.begin() as session:
        job = session.scalar(select(JobRow).where(JobRow.id == job_id))
        assert job is not None
        job.status = "succeeded"
        job.fine_tuned_model = job.model_name
        job.model_path = str(folder / "model")
        job.finished_at = int(time.time())
        checkpoint = f"{job.model_name}:ckpt-step-3"
        session.add(
            CheckpointRow(
                id="ftckpt-tenancy",
                job_id=job_id,
                created_at=int(time.time()),
                step_number=3,
                metrics={},
                fine_tuned_model_checkpoint=checkpoint,
                path=str(folder / "ckpt"),
            )
        )
        return job.model_name, checkpoint


def test_another_organization_sees_nothing_and_admin_sees_all(container: Container, tmp_path: Path) -> None:
    org_a = ensure_organization(container.sessions, "team-a").id
    org_b = ensure_organization(container.sessions, "team-b").id
    file_a = _upload(container, org_a, "search")
    file_b = _upload(container, org_b, None)
    params = FineTuningJobCreate.model_validate({"model": TINY_MODEL_NAME, "training_file": file_a, "suffix": "s"})
    job_a = container.fine_tuning.create(org_a, params, project="search")
    model, checkpoint = _succeed(container, job_a.id, tmp_path / "weights")
    assert model.startswith(f"ft:{TINY_MODEL_NAME}:team-a:s:")  # the organization's name, not its id
    assert job_a.organization_id == org_a
    with container.sessions.begin() as session:
        assert session.scalar(select(FileRow.project).where(FileRow.id == file_a)) == "search"
        assert session.scalar(select(JobRow.project).where(JobRow.id == job_a.id)) == "search"

    # organization B: every way in is a 404 (or an empty list)
    for call in (
        lambda: container.files.get(org_b, file_a),
        lambda: container.files.content(org_b, file_a),
        lambda: container.files.delete(org_b, file_a),
        lambda: container.fine_tuning.get(org_b, job_a.id),
        lambda: container.fine_tuning.list_events(org_b, job_a.id, after=None, limit=10),
        lambda: container.fine_tuning.list_checkpoints(org_b, job_a.id, after=None, limit=10),
        lambda: container.fine_tuning.cancel(org_b, job_a.id),
        lambda: container.fine_tuning.pause(org_b, job_a.id),
        lambda: container.fine_tuning.resume(org_b, job_a.id),
    ):
        with pytest.raises(NotFound):
            call()
    for name in (model, checkpoint):
        with pytest.raises(ModelNotFound):
            container.models.get(org_b, name)
        with pytest.raises(ModelNotFound):
            container.models.delete(org_b, name)
        with pytest.raises(ModelNotFound):
            container.models.target(org_b, name)
        with pytest.raises(ModelNotFound):
            asyncio.run(
                container.inference.chat(
                    org_b,
                    ChatCompletionRequest.model_validate(
                        {"model": name, "messages": [{"role": "user", "content": "x"}]}
                    ),
                )
            )
        with pytest.raises(ModelNotFound):
            request = CompletionRequest.model_validate({"model": name, "prompt": "x"})
            asyncio.run(container.inference.complete(org_b, request))
    assert [f.id for f in container.files.list(org_b, purpose=None, after=None, limit=100, order="desc").data] == [
        file_b
    ]
    assert container.fine_tuning.list(org_b, after=None, limit=100, metadata=None).data == []
    assert {model, checkpoint}.isdisjoint(m.id for m in container.models.list(org_b).data)
    with pytest.raises(InvalidRequest) as excinfo:  # B cannot train on A's file
        container.fine_tuning.create(org_b, params)
    assert excinfo.value.param == "training_file"
    with pytest.raises(InvalidRequest) as excinfo:  # nor continue from A's model
        container.fine_tuning.create(
            org_b, FineTuningJobCreate.model_validate({"model": model, "training_file": file_b})
        )
    assert excinfo.value.code == "model_not_found"

    # organization A and an admin (scope None) see A's objects; the admin sees B's too
    for scope in (org_a, None):
        assert container.files.get(scope, file_a).id == file_a
        assert container.fine_tuning.get(scope, job_a.id).organization_id == org_a
        assert container.fine_tuning.list_checkpoints(scope, job_a.id, after=None, limit=10).data[0].step_number == 3
        assert container.models.get(scope, model).owned_by == org_a
        listed = {m.id: m.owned_by for m in container.models.list(scope).data}
        assert listed[model] == listed[checkpoint] == org_a
    admin_files = {f.id for f in container.files.list(None, purpose=None, after=None, limit=100, order="desc").data}
    assert {file_a, file_b} <= admin_files
    assert [j.id for j in container.fine_tuning.list(None, after=None, limit=100, metadata=None).data] == [job_a.id]
    assert container.files.get(None, file_b).id == file_b
    # an admin deletes across organizations
    assert container.models.delete(None, model).deleted
    with pytest.raises(ModelNotFound):
        container.models.get(org_a, model)
    container.files.delete(None, file_b)
    with pytest.raises(NotFound):
        container.files.get(org_b, file_b)
