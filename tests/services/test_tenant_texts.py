"""What a job's owner reads names no server path, host, pid or other organizations' queue: job events, the
job's `error`, and API error messages. Rows are written as the worker and the runner write them (server
detail and all) on a real database; the tests read them back the way the API does."""

from __future__ import annotations

import json
import socket
import time

import pytest

from openft.api.errors import error_response
from openft.db import repositories as repo
from openft.domain.job_states import JobStatus
from openft.errors import InvalidRequest, ModelNotFound
from openft.jobs import queue
from openft.jobs.outcome import record_failure
from openft.protocol.fine_tuning import FineTuningJobCreate
from openft.services.container import Container
from openft.storage import LocalBlobStore
from tests.conftest import TINY_MODEL_NAME
from tests.support.data import jsonl_bytes, valid_examples


def _job(container: Container, **overrides: object) -> str:
    assert isinstance(container.store, LocalBlobStore)
    writer = container.store.writer()
    writer.write(jsonl_bytes(valid_examples(12)))
    file_id = container.files.create(container.default_org_id, purpose="fine-tune", filename="t", writer=writer).id
    params = FineTuningJobCreate.model_validate({"model": TINY_MODEL_NAME, "training_file": file_id, **overrides})
    return container.fine_tuning.create(container.default_org_id, params).id


def _seen(container: Container, job_id: str) -> str:
    """Everything the owner can read about the job, as one text."""
    job = container.fine_tuning.get(container.default_org_id, job_id)
    events = container.fine_tuning.list_events(container.default_org_id, job_id, after=None, limit=100).data
    return job.model_dump_json() + "".join(event.model_dump_json() for event in events)


def test_a_failure_naming_a_server_path_reaches_the_owner_without_it(container: Container) -> None:
    job_id = _job(container)
    models = str(container.settings.models_dir)
    message = f"model_not_found: the model folder of 'tiny' is missing ({models}/tiny); see {models}/x.log"
    with container.sessions.begin() as session:
        job = repo.get_job(session, None, job_id)
        assert job is not None
        assert record_failure(session, job_id, attempt=job.attempt, code="model_not_found", message=message, param=None)
    failed = container.fine_tuning.get(container.default_org_id, job_id)
    assert failed.status == "failed" and failed.error is not None
    assert failed.error.message.startswith("model_not_found: the model folder of 'tiny' is missing (")
    seen = _seen(container, job_id)
    assert models not in seen and str(container.settings.data_dir) not in seen


def test_events_written_with_server_detail_are_read_without_it(container: Container) -> None:
    job_id = _job(container)
    worker_id = f"{socket.gethostname()}-4242-abcdef"
    jobs_dir = container.settings.jobs_dir
    with container.sessions.begin() as session:
        session.add(  # as a dead worker's recovery and an older trainer wrote them
            repo.new_event(
                job_id, "Recovered after its worker stopped.", data={"worker_id": worker_id, "resume_step": 3}
            )
        )
        session.add(repo.new_event(job_id, f"Job paused at step 3; checkpoint written to {jobs_dir}/{job_id}/x."))
        estimate = queue.QueueEstimate(position=2, length=17, estimated_start=None, estimated_finish=None)
        session.add(
            repo.new_event(job_id, queue.report_message(estimate, time.time()), data=queue.report_data(estimate, 1))
        )
    seen = _seen(container, job_id)
    assert worker_id not in seen and "4242" not in seen and str(jobs_dir) not in seen
    assert "of 17" not in seen and "queue_length" not in seen  # how many jobs other organizations have waiting
    assert "Queued: position 2" in seen and '"resume_step":3' in seen  # what is the owner's stays


def test_api_error_messages_name_no_server_path(container: Container) -> None:
    models = container.settings.models_dir
    error = ModelNotFound(f"The model 'x' cannot be loaded on this server: missing ({models}/x)", param="model")
    body = json.loads(error_response(error).body)
    assert str(models) not in body["error"]["message"] and "cannot be loaded" in body["error"]["message"]


def test_a_job_cannot_choose_the_wandb_entity_the_operators_key_writes_into(container: Container) -> None:
    with pytest.raises(InvalidRequest) as refused:
        _job(container, integrations=[{"type": "wandb", "wandb": {"project": "p", "entity": "another-team"}}])
    assert refused.value.param == "integrations" and "entity" in refused.value.message
    job_id = _job(container, integrations=[{"type": "wandb", "wandb": {"project": "p"}}])  # no entity: fine
    with container.sessions.begin() as session:
        job = repo.get_job(session, None, job_id)
        assert job is not None and JobStatus(job.status) is JobStatus.VALIDATING_FILES
