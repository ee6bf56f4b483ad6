"""Fine-tuning jobs: create, read, list, and the user actions pause / resume / cancel.

Reads and user actions take `org_id: str | None`: the caller's organization, or None for an admin key
(every organization's jobs). Another organization's job is the same 404 as an unknown id.

The service only records decisions in the database; the worker (jobs/worker.py) notices them and
acts on the training process. Every status change is a compare-and-set through the one transition
table in `domain/job_states.py`, so a request racing the worker can never produce an illegal status.
"""

from __future__ import annotations

import importlib.util
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from openft import graders, ids
from openft.basemodels import ModelCatalog
from openft.db import repositories as repo
from openft.db.engine import read_only_sessions
from openft.db.tables import CheckpointRow, JobEventRow, JobRow
from openft.domain.job_states import ACTION_TARGET, TERMINAL, JobStatus, UserAction, action_sources
from openft.domain.model_names import fine_tuned_model_name
from openft.errors import InvalidJobState, InvalidRequest, ModelNotFound, NotFound
from openft.fsutil import remove_tree
from openft.jobs.job_file import usable_cpus, visible_gpus
from openft.jobs.queue import QueueEstimate, estimate_queue
from openft.protocol.common import IdListPage, ListPage
from openft.protocol.fine_tuning import (
    IGNORED_HYPERPARAMETERS,
    MAX_SEED,
    DpoHyperparameters,
    FineTuningJob,
    FineTuningJobCheckpoint,
    FineTuningJobCreate,
    FineTuningJobEvent,
    JobError,
    JobHyperparameters,
    ReinforcementHyperparameters,
    SupervisedHyperparameters,
)
from openft.redact import redact_paths, tenant_error, tenant_event_data
from openft.services import quotas
from openft.services.graders import resolve_judges
from openft.services.models import Caller, ModelService

HYPERPARAMETER_NAMES = ("batch_size", "learning_rate_multiplier", "n_epochs")
METHODS = ("supervised", "dpo", "reinforcement")
HYPERPARAMETER_MODELS: dict[str, type[SupervisedHyperparameters] | type[ReinforcementHyperparameters]] = {
    "supervised": SupervisedHyperparameters,
    "dpo": DpoHyperparameters,
    "reinforcement": ReinforcementHyperparameters,
}
NOT_RUNNING_TRAINED_TOKENS = {JobStatus.VALIDATING_FILES, JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.PAUSING}


# Wire conversion ------------------------------------------------------------------------------


def requested_hyperparameters(row: JobRow) -> dict[str, Any]:
    """What the request asked for under `method.<type>.hyperparameters` ("auto" spelled out, extensions kept)."""
    return dict((row.method.get(row.method["type"]) or {}).get("hyperparameters") or {})


def job_hyperparameters(row: JobRow) -> dict[str, Any]:
    """`method.<type>.hyperparameters`: resolved numbers once the worker has seen the data, "auto" before."""
    return requested_hyperparameters(row) | dict(row.resolved_hyperparameters or {})


def job_to_wire(row: JobRow, queued: QueueEstimate | None = None) -> FineTuningJob:
    """The wire job; `queued` is its place in the queue when it is queued (jobs/queue.py)."""
    status = JobStatus(row.status)
    hyperparameters = job_hyperparameters(row)
    section: dict[str, Any] = {"hyperparameters": hyperparameters}
    if "grader" in row.method.get(row.method["type"], {}):  # reinforcement
        section["grader"] = row.method[row.method["type"]]["grader"]
    method = {"type": row.method["type"], row.method["type"]: section}
    standard = {name: hyperparameters.get(name, "auto") for name in HYPERPARAMETER_NAMES}
    return FineTuningJob(
        id=row.id,
        created_at=row.created_at,
        error=JobError(**tenant_error(row.error)) if row.error else None,
        fine_tuned_model=row.fine_tuned_model,
        finished_at=row.finished_at,
        hyperparameters=JobHyperparameters(**standard),
        model=row.model,
        organization_id=row.organization_id,
        result_files=list(row.result_files or []),
        seed=row.seed,
        status=status.value,
        trained_tokens=None if status in NOT_RUNNING_TRAINED_TOKENS else (row.trained_tokens or 0),
        training_file=row.training_file,
        validation_file=row.validation_file,
        integrations=row.integrations,
        estimated_finish=(
            row.estimated_finish
            if status in (JobStatus.RUNNING, JobStatus.PAUSING)
            else (queued.estimated_finish if queued is not None and status is JobStatus.QUEUED else None)
        ),
        method=method,
        metadata=row.metadata_,
        user_provided_suffix=row.suffix,
        queue_position=queued.position if queued is not None and status is JobStatus.QUEUED else None,
        estimated_start=queued.estimated_start if queued is not None and status is JobStatus.QUEUED else None,
        # the plan (total_steps) is known once the files are validated; until then there is no progress to report
        completed_steps=row.completed_steps if row.total_steps is not None else None,
        total_steps=row.total_steps,
    )


def _queue_estimates(session: Session, rows: list[JobRow]) -> dict[str, QueueEstimate]:
    """Queue estimates, computed only when one of `rows` is queued (one query of the active jobs)."""
    if not any(row.status == JobStatus.QUEUED for row in rows):
        return {}
    return estimate_queue(*repo.queue_snapshot(session), time.time())


def event_to_wire(row: JobEventRow) -> FineTuningJobEvent:
    return FineTuningJobEvent(
        id=row.id,
        created_at=row.created_at,
        level=row.level,  # type: ignore[arg-type]  # a str column; only new_event writes it, with these literals
        message=redact_paths(row.message),  # owners read events: no server paths, hosts or pids (openft.redact)
        type=row.type,  # type: ignore[arg-type]  # likewise: "message" or "metrics"
        data=tenant_event_data(row.data),
    )


def checkpoint_to_wire(row: CheckpointRow) -> FineTuningJobCheckpoint:
    return FineTuningJobCheckpoint(
        id=row.id,
        created_at=row.created_at,
        fine_tuned_model_checkpoint=row.fine_tuned_model_checkpoint,
        fine_tuning_job_id=row.job_id,
        step_number=row.step_number,
        metrics=_checkpoint_metrics(row.metrics or {}),
    )


def _checkpoint_metrics(metrics: dict[str, Any]) -> dict[str, int | float]:
    """The metrics as OpenAI prints them: `step` an integer (the trainer's JSON may hold `20.0`), no nulls."""
    out: dict[str, int | float] = {k: v for k, v in metrics.items() if v is not None}
    step = out.get("step")
    if isinstance(step, float) and step.is_integer():
        out["step"] = int(step)
    return out


# Request → job ------------------------------------------------------------------------------


def _requested_method(params: FineTuningJobCreate) -> dict[str, Any]:
    """One `method` object with every standard hyperparameter spelled out ("auto" where not given).

    The deprecated top-level `hyperparameters` and `method.<type>.hyperparameters` mean the same thing;
    giving both with different values is ambiguous and refused. openft's extensions (LoRA settings,
    full fine-tuning, sequence length, packing) are kept only where given.
    """
    method = params.method
    kind = method.type if method is not None else "supervised"
    if method is not None:
        for other in METHODS:
            if other != kind and getattr(method, other) is not None:
                raise InvalidRequest(f"method.{other} does not match method.type {kind!r}.", param=f"method.{other}")
    if kind == "reinforcement" and (method is None or method.reinforcement is None):
        raise InvalidRequest("A reinforcement job needs method.reinforcement with its grader.", param="method")
    section = getattr(method, kind) if method is not None else None
    nested = section.hyperparameters if section is not None else None
    top = params.hyperparameters
    if top is not None and nested is not None:
        given = nested.model_dump(include=set(HYPERPARAMETER_NAMES))
        if top.model_dump(include=set(HYPERPARAMETER_NAMES)) != given:
            raise InvalidRequest(
                f"Give hyperparameters either in method.{kind}.hyperparameters or in the deprecated top-level "
                "hyperparameters, not both.",
                param="hyperparameters",
            )
    model = HYPERPARAMETER_MODELS[kind]
    chosen = nested or model(**(top.model_dump(include=set(HYPERPARAMETER_NAMES)) if top is not None else {}))
    values = chosen.model_dump(exclude_none=True, exclude=set(IGNORED_HYPERPARAMETERS))
    if kind != "reinforcement":
        return {"type": kind, kind: {"hyperparameters": values}}
    assert method is not None and method.reinforcement is not None
    if values.get("compute", {}).get("workers", 1) > 1:
        raise InvalidRequest(
            "Reinforcement jobs run in one trainer process for now; remove compute.workers.",
            param="method.reinforcement.hyperparameters.compute",
        )
    return {"type": kind, kind: {"grader": method.reinforcement.grader, "hyperparameters": values}}


def _ignored_hyperparameters(params: FineTuningJobCreate) -> list[str]:
    """Azure's `prompt_loss_weight` and `l2_multiplier` as given (top level, `hyperparameters` or the method's),
    each with what openft does with it: the job's `warn` event (protocol.fine_tuning.IGNORED_HYPERPARAMETERS)."""
    given: dict[str, float] = {}
    sections: list[Any] = [params, params.hyperparameters]
    if params.method is not None:
        for section in (params.method.supervised, params.method.dpo, params.method.reinforcement):
            sections.append(section.hyperparameters if section is not None else None)
    for section in sections:
        for name in IGNORED_HYPERPARAMETERS:
            value = getattr(section, name, None) if section is not None else None
            if value is not None:
                given.setdefault(name, value)
    notes = []
    weight = given.get("prompt_loss_weight")
    if weight is not None and weight != 0:
        notes.append(
            f"prompt_loss_weight {weight:g} is ignored: openft learns only the assistant tokens, as with "
            "prompt_loss_weight 0."
        )
    if "l2_multiplier" in given:
        notes.append(f"l2_multiplier {given['l2_multiplier']:g} is ignored: openft's DPO has no L2 term.")
    rft = params.method.reinforcement if params.method is not None else None
    effort = rft.hyperparameters.reasoning_effort if rft is not None and rft.hyperparameters is not None else None
    if effort not in (None, "default"):
        notes.append(f"reasoning_effort {effort!r} is ignored: the models openft trains do not reason separately.")
    return notes


def _refuse_unavailable_qlora(method: dict[str, Any]) -> None:
    """`fine_tuning_mode: "qlora"` needs bitsandbytes where the trainers run (this server's environment; they
    share it): without it the job could only fail later, so it is a 400 now. Whether bitsandbytes can run on the
    training device is only known to the trainer (`quantization_unavailable`)."""
    kind = method["type"]
    if method[kind]["hyperparameters"].get("fine_tuning_mode") != "qlora":
        return
    try:
        installed = importlib.util.find_spec("bitsandbytes") is not None  # looks; imports nothing
    except (ImportError, ValueError):  # marked unimportable in sys.modules
        installed = False
    if not installed:
        raise InvalidRequest(
            "fine_tuning_mode 'qlora' needs the bitsandbytes package, which this server does not have; "
            "use 'lora' (or ask the operator to install openft's dependencies).",
            param=f"method.{kind}.hyperparameters.fine_tuning_mode",
        )


def _refuse_compute_beyond_machine(method: dict[str, Any], *, on_this_machine: bool = True) -> None:
    """`compute` asking for more than this machine holds is a 400 now rather than a job that fails later: more
    workers than usable CPUs (CPU ranks, each at least a core), more workers × GPUs per worker than visible GPUs,
    or GPUs on a machine without one; and more than one GPU per worker (a rank drives one device: openft has no
    tensor parallelism, so a second GPU would sit idle). The trainers share this machine's environment (and the
    check is repeated where they start, `compute_unavailable`). torch is imported only when a job says `compute`.

    With the Ray executor (`on_this_machine` False) the ranks run on the cluster's nodes, not here: only the rule
    of one GPU per worker applies now, and the cluster's size is checked when the run starts (jobs/executors)."""
    kind = method["type"]
    compute = method[kind]["hyperparameters"].get("compute")
    if compute is None:
        return
    workers, asked = compute.get("workers", 1), compute.get("gpus_per_worker")
    if workers == 1 and not asked:
        return  # one process, on the GPU if there is one: what every job does
    if not on_this_machine:
        gpus = per_worker = asked or 0
    else:
        gpus = visible_gpus() if asked != 0 else 0
        per_worker = asked if asked is not None else min(1, gpus)  # the default: 1 on a GPU machine, else 0
    problem = None
    if per_worker > 1:  # a rank drives one device; several per rank would need tensor parallelism
        problem = f"gpus_per_worker {per_worker}: a worker uses one GPU; use workers {workers * per_worker} instead"
    elif not on_this_machine:
        pass
    elif per_worker == 0 and workers > usable_cpus():
        problem = f"{workers} workers on the CPU need {workers} CPUs; this server has {usable_cpus()}"
    elif per_worker > 0 and gpus == 0:
        problem = f"gpus_per_worker {per_worker} needs a GPU, and this server has none; use gpus_per_worker 0"
    elif workers * per_worker > gpus:
        problem = f"{workers} workers × {per_worker} GPU(s) need {workers * per_worker} GPUs; this server has {gpus}"
    if problem is not None:
        raise InvalidRequest(f"compute: {problem}.", param=f"method.{kind}.hyperparameters.compute")


def _refuse_wandb_entity(params: FineTuningJobCreate) -> None:
    """W&B runs are written with the operator's key (the server's environment); tenants have none of their own
    here. A job choosing the `entity` would make that key write into any team it can reach, so it is refused;
    without one the run goes to the key's default entity (README: Security)."""
    for index, integration in enumerate(params.integrations or []):
        if integration.wandb.entity:
            raise InvalidRequest(
                f"integrations[{index}].wandb.entity is not supported: this server logs to Weights & Biases with "
                "its operator's key, which writes only into the operator's own entity. Leave `entity` out.",
                param="integrations",
            )


class FineTuningService:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        catalog: ModelCatalog,
        models: ModelService,
        *,
        org_names: Callable[[str], str],
        notify_worker: Callable[[], None] = lambda: None,
        trains_here: bool = True,
        embed: graders.Embed | None = None,
    ):
        """`trains_here`: the trainers run on this machine (the local executor), so `compute` is checked
        against it; False with the Ray executor. `embed`: the server's `cosine` embeddings, if any (a
        reinforcement grader using cosine is a 400 without; the trainer loads the same model)."""
        self._sessions = sessions
        self._reads = read_only_sessions(sessions)  # reads never take SQLite's write lock (db/engine.py)
        self._catalog = catalog
        self._models = models
        self._org_names = org_names
        self._notify = notify_worker
        self._trains_here = trains_here
        self._embed = embed

    # create -----------------------------------------------------------------------------------
    def create(self, org_id: str, params: FineTuningJobCreate, *, project: str | None = None) -> FineTuningJob:
        """A job of the caller's own organization (and project), also for admin keys: its files and any model
        it continues from must be that organization's."""
        _refuse_wandb_entity(params)
        base_model, parent_weights = self._starting_point(Caller(org_id, org_id, project), params.model)
        method = _requested_method(params)
        judge_models = self._check_grader(Caller(org_id, org_id, project), method)
        _refuse_unavailable_qlora(method)
        _refuse_compute_beyond_machine(method, on_this_machine=self._trains_here)
        job_id = ids.job_id()
        now = int(time.time())
        org_name = self._org_names(org_id)  # before the transaction: never nest sessions (SQLite write lock)
        with self._sessions.begin() as session:
            quotas.check_queued_jobs(session, org_id)  # 429 quota_exceeded at the organization's max_queued_jobs
            for param, file_id in (
                ("training_file", params.training_file),
                ("validation_file", params.validation_file),
            ):
                if file_id is None:
                    continue
                file_row = repo.get_file(session, org_id, file_id)
                if file_row is None:
                    raise InvalidRequest(f"Invalid file id {file_id!r}: no such file.", param=param)
                if file_row.purpose != "fine-tune":
                    raise InvalidRequest(
                        f"File {file_id} has purpose {file_row.purpose!r}; fine-tuning needs purpose 'fine-tune'.",
                        param=param,
                    )
            row = JobRow(
                id=job_id,
                organization_id=org_id,
                project=project,
                model=params.model,
                base_model=base_model,
                parent_weights=parent_weights,
                judge_models=judge_models,
                training_file=params.training_file,
                validation_file=params.validation_file,
                status=JobStatus.VALIDATING_FILES.value,
                created_at=now,
                updated_at=time.time(),
                model_name=fine_tuned_model_name(base_model, org_name, params.suffix, job_id),
                method=method,
                seed=params.seed if params.seed is not None else secrets.randbelow(MAX_SEED + 1),
                suffix=params.suffix,
                metadata_=params.metadata,
                integrations=[i.model_dump() for i in params.integrations] if params.integrations else None,
                result_files=[],
            )
            session.add(row)
            session.flush()
            repo.add_event(session, job_id, f"Created fine-tuning job: {job_id}")
            repo.add_event(session, job_id, f"Validating training file: {params.training_file}")
            for note in _ignored_hyperparameters(params):
                repo.add_event(session, job_id, note, level="warn")
        self._notify()
        return job_to_wire(row)

    def _check_grader(self, caller: Caller, method: dict[str, Any]) -> dict[str, Any] | None:
        """A reinforcement job's grader must run (the Graders API's rules: a 400 naming its field now, not a job
        that fails later); returns its judge models (score_model and label_model graders'), resolved now for
        the caller — aliases included, so re-pointing one later does not change a running job — and checked
        loadable: the trainer loads them itself (training/judges.py). None for other jobs."""
        if method["type"] != "reinforcement":
            return None
        grader = method["reinforcement"]["grader"]
        graders.validate(grader, embed=self._embed, param="method.reinforcement.grader")
        found = resolve_judges(self._models, caller, grader, "method.reinforcement.grader", load=True)
        return {
            name: {"base": judge.base_name, "weights": str(judge.weights) if judge.weights else None}
            for name, judge in found.items()
        } or None

    def _starting_point(self, caller: Caller, model: str) -> tuple[str, str | None]:
        """(base model, weights to continue from): `model` is a base model, one of the caller's fine-tuned
        models or checkpoints, a checkpoint shared with its project, or an alias of one of those (continued
        fine-tuning starts from its weights)."""
        if self._catalog.get(model) is not None:
            return model, None
        try:
            resolved = self._models.resolve(caller, model)
        except ModelNotFound:
            raise InvalidRequest(
                f"Model {model!r} is not available for fine-tuning. Use a base model (a sub-folder of the models "
                "directory holding a Hugging Face causal LM, the built-in SmolLM2-135M-Instruct, or a Hugging Face "
                "hub id this server allows), or one of your fine-tuned models or checkpoints.",
                param="model",
                code="model_not_found",
            ) from None
        return resolved.base_name, str(resolved.weights) if resolved.weights else None

    # read -------------------------------------------------------------------------------------
    def _job(self, session: Session, org_id: str | None, job_id: str) -> JobRow:
        row = repo.get_job(session, org_id, job_id)
        if row is None:
            raise NotFound(f"No such fine-tuning job: {job_id}", param="fine_tuning_job_id")
        return row

    def get(self, org_id: str | None, job_id: str) -> FineTuningJob:
        with self._reads.begin() as session:
            row = self._job(session, org_id, job_id)
            return job_to_wire(row, _queue_estimates(session, [row]).get(row.id))

    def list(
        self,
        org_id: str | None,
        *,
        after: str | None,
        limit: int,
        metadata: dict[str, str] | None,
        without_metadata: bool = False,
    ) -> ListPage[FineTuningJob]:
        """`without_metadata`: only jobs created without metadata (OpenAI's `metadata=null` filter)."""
        with self._reads.begin() as session:
            page = repo.list_jobs(
                session, org_id, after=after, limit=limit, metadata=metadata, without_metadata=without_metadata
            )
            queued = _queue_estimates(session, page.data)
            data = [job_to_wire(r, queued.get(r.id)) for r in page.data]
            return ListPage[FineTuningJob](data=data, has_more=page.has_more)

    def list_events(
        self, org_id: str | None, job_id: str, *, after: str | None, limit: int
    ) -> ListPage[FineTuningJobEvent]:
        with self._reads.begin() as session:
            self._job(session, org_id, job_id)
            page = repo.list_events(session, job_id, after=after, limit=limit)
            return ListPage[FineTuningJobEvent](data=[event_to_wire(r) for r in page.data], has_more=page.has_more)

    def list_checkpoints(
        self, org_id: str | None, job_id: str, *, after: str | None, limit: int
    ) -> IdListPage[FineTuningJobCheckpoint]:
        with self._reads.begin() as session:
            self._job(session, org_id, job_id)
            page = repo.list_checkpoints(session, job_id, after=after, limit=limit)
            data = [checkpoint_to_wire(r) for r in page.data]
        return IdListPage[FineTuningJobCheckpoint](
            data=data,
            has_more=page.has_more,
            first_id=data[0].id if data else None,
            last_id=data[-1].id if data else None,
        )

    # delete (Azure dated API) ------------------------------------------------------------------
    def delete(self, org_id: str | None, job_id: str, *, jobs_dir: Path, forget_stored: Callable[[str], None]) -> None:
        """Delete a finished job: it disappears from list and retrieve, with its events and checkpoints, and its
        working folder (`jobs_dir/<id>`) and stored checkpoints go too, as the retention sweep would remove them
        (jobs/retention.py; it never touches a folder whose job row is gone, so the folder must go now). Its
        result files stay (they are files: `DELETE /files/{id}`).

        Refused (400 `invalid_job_state`) for a job not yet succeeded, failed or cancelled (cancel it first), and
        for a succeeded job whose fine-tuned model still exists: deleting the record must not delete weights a
        client may still call; delete the model first (`DELETE /models/{model}`), then the job."""
        with self._reads.begin() as session:
            _refuse_undeletable(self._job(session, org_id, job_id))
        forget_stored(job_id)  # first: if the store fails, nothing is deleted and the client may retry
        with self._sessions.begin() as session:
            _refuse_undeletable(self._job(session, org_id, job_id))  # as it is now (a concurrent delete: 404)
            repo.delete_job(session, job_id)
        remove_tree(jobs_dir / job_id)

    # user actions -----------------------------------------------------------------------------
    def pause(self, org_id: str | None, job_id: str) -> FineTuningJob:
        return self._act(org_id, job_id, UserAction.PAUSE)

    def resume(self, org_id: str | None, job_id: str) -> FineTuningJob:
        return self._act(org_id, job_id, UserAction.RESUME)

    def cancel(self, org_id: str | None, job_id: str) -> FineTuningJob:
        return self._act(org_id, job_id, UserAction.CANCEL)

    def _act(self, org_id: str | None, job_id: str, action: UserAction) -> FineTuningJob:
        with self._sessions.begin() as session:
            row = self._job(session, org_id, job_id)
            status = JobStatus(row.status)
            if status not in action_sources(action):
                raise InvalidJobState(_refusal(action, status))
            if action is UserAction.PAUSE and row.completed_steps < 1:
                raise InvalidJobState(
                    "The job cannot be paused before it has completed its first training step; try again shortly."
                )
            fields: dict[str, Any] = {}
            if action is UserAction.CANCEL:
                fields = {"finished_at": int(time.time()), "estimated_finish": None}
            if not repo.transition_job(session, job_id, ACTION_TARGET[action], sources=[status], **fields):
                raise InvalidJobState(f"The job's status changed while the {action.value} was being applied; retry.")
            repo.add_event(session, job_id, _action_message(action, row))
            session.flush()
            session.refresh(row)  # the UPDATE above bypassed the ORM object
            wire = job_to_wire(row, _queue_estimates(session, [row]).get(row.id))
        self._notify()
        return wire


def _refuse_undeletable(row: JobRow) -> None:
    """`FineTuningService.delete` takes finished jobs whose fine-tuned model (if any) is gone."""
    status = JobStatus(row.status)
    if status not in TERMINAL:
        raise InvalidRequest(
            f"Cannot delete a job whose status is '{status.value}'; only succeeded, failed or cancelled jobs "
            "can be deleted (cancel it first).",
            param="fine_tuning_job_id",
            code="invalid_job_state",
        )
    if row.fine_tuned_model is not None and row.model_deleted_at is None:
        raise InvalidRequest(
            f"The job's fine-tuned model '{row.fine_tuned_model}' still exists; delete the model first "
            f"(DELETE /models/{row.fine_tuned_model}), then the job.",
            param="fine_tuning_job_id",
            code="invalid_job_state",
        )


def _refusal(action: UserAction, status: JobStatus) -> str:
    allowed = ", ".join(sorted(s.value for s in action_sources(action)))
    return f"Cannot {action.value} a job whose status is '{status.value}' (allowed from: {allowed})."


def _action_message(action: UserAction, row: JobRow) -> str:
    if action is UserAction.PAUSE:
        return f"Pause requested at step {row.completed_steps}; the job pauses after its checkpoint is written."
    if action is UserAction.RESUME:
        return "Job resumed; queued to continue from its last checkpoint."
    return "Job cancelled."
