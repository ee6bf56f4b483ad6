from __future__ import annotations

import sys
import time

import pytest

from openft.db import repositories as repo
from openft.domain.job_states import JobStatus
from openft.domain.model_names import fine_tuned_model_name as model_name_for
from openft.errors import InvalidJobState, InvalidRequest, NotFound
from openft.protocol.fine_tuning import FineTuningJobCreate
from openft.services.container import Container
from openft.storage import LocalBlobStore
from tests.conftest import TINY_MODEL_NAME
from tests.support.data import jsonl_bytes, valid_examples


def _upload(container: Container, content: bytes, purpose: str = "fine-tune") -> str:
    assert isinstance(container.store, LocalBlobStore)
    writer = container.store.writer()
    writer.write(content)
    return container.files.create(container.default_org_id, purpose=purpose, filename="t.jsonl", writer=writer).id


def _params(**overrides: object) -> FineTuningJobCreate:
    return FineTuningJobCreate.model_validate({"model": TINY_MODEL_NAME, **overrides})


def test_model_names() -> None:
    assert model_name_for("gpt", "acme", "s", "ftjob-AbCdEfGh123") == "ft:gpt:acme:s:AbCdEfGh"
    assert model_name_for("gpt", "acme", None, "ftjob-AbCdEfGh123") == "ft:gpt:acme::AbCdEfGh"
    assert model_name_for("Org/Model", "acme", None, "ftjob-x1234567") == "ft:Org--Model:acme::x1234567"


def test_create_resolves_seed_and_spells_out_auto(container: Container) -> None:
    file_id = _upload(container, jsonl_bytes(valid_examples(12)))
    job = container.fine_tuning.create(container.default_org_id, _params(training_file=file_id))
    assert 0 <= job.seed <= 2_147_483_647
    assert job.method == {
        "type": "supervised",
        "supervised": {
            "hyperparameters": {"batch_size": "auto", "learning_rate_multiplier": "auto", "n_epochs": "auto"}
        },
    }
    assert job.status == "validating_files" and job.trained_tokens is None and job.estimated_finish is None
    same = container.fine_tuning.create(
        container.default_org_id,
        _params(
            training_file=file_id,
            hyperparameters={"n_epochs": 2},
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}},
        ),
    )
    assert same.hyperparameters.n_epochs == 2  # the same values in both places are not a conflict
    with pytest.raises(InvalidRequest) as excinfo:
        container.fine_tuning.create(
            container.default_org_id,
            _params(
                training_file=file_id,
                hyperparameters={"n_epochs": 2},
                method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}},
            ),
        )
    assert excinfo.value.param == "hyperparameters"


def test_other_organizations_see_nothing(container: Container) -> None:
    file_id = _upload(container, jsonl_bytes(valid_examples(12)))
    job = container.fine_tuning.create(container.default_org_id, _params(training_file=file_id))
    with pytest.raises(NotFound):
        container.fine_tuning.get("org-other", job.id)
    with pytest.raises(NotFound):
        container.files.get("org-other", file_id)
    with pytest.raises(InvalidRequest) as excinfo:
        container.fine_tuning.create("org-other", _params(training_file=file_id))
    assert excinfo.value.param == "training_file"


def test_pause_needs_a_completed_step_and_wire_nulls_follow_the_status(container: Container) -> None:
    file_id = _upload(container, jsonl_bytes(valid_examples(12)))
    job = container.fine_tuning.create(container.default_org_id, _params(training_file=file_id))
    with container.sessions.begin() as session:
        repo.transition_job(session, job.id, JobStatus.QUEUED)
        repo.transition_job(
            session, job.id, JobStatus.RUNNING, trained_tokens=500, estimated_finish=int(time.time()) + 60
        )
    running = container.fine_tuning.get(container.default_org_id, job.id)
    assert running.trained_tokens is None and running.estimated_finish is not None
    with pytest.raises(InvalidJobState, match="first training step"):
        container.fine_tuning.pause(container.default_org_id, job.id)
    with container.sessions.begin() as session:
        repo.update_job_fenced(session, job.id, 0, completed_steps=1)
    assert container.fine_tuning.pause(container.default_org_id, job.id).status == "pausing"
    with container.sessions.begin() as session:
        repo.transition_job(session, job.id, JobStatus.PAUSED)
    paused = container.fine_tuning.get(container.default_org_id, job.id)
    assert paused.trained_tokens == 500 and paused.estimated_finish is None
    assert container.fine_tuning.resume(container.default_org_id, job.id).status == "queued"
    cancelled = container.fine_tuning.cancel(container.default_org_id, job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    with pytest.raises(InvalidJobState, match="cancelled"):
        container.fine_tuning.cancel(container.default_org_id, job.id)


@pytest.mark.parametrize("kind", ["supervised", "dpo"])
def test_qlora_without_bitsandbytes_is_a_400_naming_the_option(
    container: Container, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    file_id = _upload(container, jsonl_bytes(valid_examples(12)))
    method = {"type": kind, kind: {"hyperparameters": {"fine_tuning_mode": "qlora", "lora_rank": 8}}}
    accepted = container.fine_tuning.create(container.default_org_id, _params(training_file=file_id, method=method))
    assert accepted.method[kind]["hyperparameters"]["fine_tuning_mode"] == "qlora"  # LoRA options go with it
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if it were not installed
    with pytest.raises(InvalidRequest) as excinfo:
        container.fine_tuning.create(container.default_org_id, _params(training_file=file_id, method=method))
    assert excinfo.value.param == f"method.{kind}.hyperparameters.fine_tuning_mode"
    assert "bitsandbytes" in str(excinfo.value)
    lora = {"type": kind, kind: {"hyperparameters": {"fine_tuning_mode": "lora"}}}
    assert container.fine_tuning.create(container.default_org_id, _params(training_file=file_id, method=lora)).id
