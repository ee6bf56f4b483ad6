"""Table definitions. Rows are not wire objects: `protocol/` builds the OpenAI shapes from them.

Every table has an integer `seq` primary key that only grows: lists are ordered by it and cursors
(`after=<public id>`) translate to `seq < n` (newest first) or `seq > n`, which is stable under
concurrent inserts. Public ids (`file-…`, `ftjob-…`) are separate unique columns. Times are unix
seconds, as on the wire.
"""

from __future__ import annotations

from typing import Any, ClassVar

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


class OrganizationRow(Base):
    __tablename__ = "organizations"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    # Limits (None: unlimited), set with `openft keys create --max-…` or `openft orgs set-limits` (README, Limits)
    max_running_jobs: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """Training jobs running (or pausing) at once; the claim skips the organization at its limit."""
    max_queued_jobs: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """Jobs waiting (validating files or queued); creating one more is refused with 429 `quota_exceeded`."""
    max_storage_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    """Bytes of stored files; an upload that would go over is refused with 429 `quota_exceeded`."""
    last_claimed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    """When a worker last claimed one of its jobs: the claim serves the organization that waited longest."""


class DatabaseIdentityRow(Base):
    """The one row naming this database (`db-…`, made by migration 0005). The data folder records the same
    id on first use, so a process that opens the folder with another database notices (services/data_folder.py)."""

    __tablename__ = "database_identity"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[int] = mapped_column(BigInteger)


class ApiKeyRow(Base):
    """An API key of an organization (and optionally a project). Only the key's SHA-256 is stored: keys
    are 40 random base62 characters (~238 bits), so a plain hash cannot be brute-forced and can be
    looked up by equality on every request (a revoked key stops working at once)."""

    __tablename__ = "api_keys"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    project: Mapped[str | None] = mapped_column(String(64), nullable=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    """Hex SHA-256 of the whole key."""
    prefix: Mapped[str] = mapped_column(String(32))
    """The key's first characters, to recognise it in listings (never enough to use it)."""
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    rate_limit_per_minute: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class FileRow(Base):
    __tablename__ = "files"
    __table_args__ = (Index("ix_files_org_purpose", "organization_id", "purpose"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    organization_id: Mapped[str] = mapped_column(String(64), index=True)
    project: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """The project of the key that uploaded it (recorded; access is decided by organization)."""
    filename: Mapped[str] = mapped_column(String(512))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="processed")


class JobRow(Base):
    __tablename__ = "fine_tuning_jobs"
    __table_args__ = (Index("ix_jobs_status_seq", "status", "seq"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    organization_id: Mapped[str] = mapped_column(String(64), index=True)
    project: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """The project of the key that created it (recorded; access is decided by organization)."""
    model: Mapped[str] = mapped_column(String(256))
    """The `model` the request named: a base model, or a fine-tuned model / checkpoint to continue from."""
    base_model: Mapped[str | None] = mapped_column(String(256), nullable=True)
    """The base model underneath (`model` itself for a base); names the fine-tuned model and its base."""
    parent_weights: Mapped[str | None] = mapped_column(Text, nullable=True)
    """Continued fine-tuning: the adapter or model folder training starts from (copied into the job at
    validation, so deleting the parent later cannot break a resume)."""
    judge_models: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    """Reinforcement jobs: each judge model its grader names, as resolved for the caller at creation —
    `{name: {"base": base model, "weights": adapter or model folder or null}}` (fine-tuned weights are
    copied into the job at validation, like `parent_weights`)."""
    training_file: Mapped[str] = mapped_column(String(64))
    validation_file: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[int] = mapped_column(BigInteger)
    started_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    finished_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    updated_at: Mapped[float] = mapped_column(Float)
    fine_tuned_model: Mapped[str | None] = mapped_column(String(512), nullable=True)
    model_name: Mapped[str] = mapped_column(String(512), unique=True)
    """The `ft:…` name the model gets; fixed at creation so checkpoints can be named while running."""
    model_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    model_deleted_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    """When `DELETE /models/{fine_tuned_model}` removed the model; the job keeps its record."""
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    method: Mapped[dict[str, Any]] = mapped_column(JSON)
    """The requested `method` object with every hyperparameter present (`"auto"` until resolved)."""
    resolved_hyperparameters: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    seed: Mapped[int] = mapped_column(BigInteger)
    suffix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, nullable=True)
    integrations: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    estimated_finish: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    result_files: Mapped[list[Any]] = mapped_column(JSON, default=list)
    n_examples: Mapped[int | None] = mapped_column(Integer, nullable=True)
    total_steps: Mapped[int | None] = mapped_column(Integer, nullable=True)
    completed_steps: Mapped[int] = mapped_column(Integer, default=0)
    # Claim, lease and fencing: a worker owns a running job while its lease is fresh; `attempt`
    # grows with every claim and every write by a runner is conditional on it.
    worker_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    attempt: Mapped[int] = mapped_column(Integer, default=0)

    @property
    def base(self) -> str:
        """The base model under this job's weights (jobs from before migration 0003 record none: `model`)."""
        return self.base_model or self.model


class JobEventRow(Base):
    __tablename__ = "fine_tuning_job_events"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    level: Mapped[str] = mapped_column(String(8))
    message: Mapped[str] = mapped_column(Text)
    type: Mapped[str] = mapped_column(String(16), default="message")
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class CheckpointRow(Base):
    __tablename__ = "fine_tuning_job_checkpoints"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    step_number: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    fine_tuned_model_checkpoint: Mapped[str] = mapped_column(String(600), unique=True)
    path: Mapped[str] = mapped_column(Text)


# --- model aliases (0007) ---
class ModelAliasRow(Base):
    """Another name for a model, within one organization: a retired vendor name (`gpt-4o-mini-2024-07-18`,
    `ft:gpt-4o-mini:acme:support:abc123`) or an Azure deployment name answering for a base, fine-tune or
    checkpoint, so running code keeps its model names (services/aliases.py)."""

    __tablename__ = "model_aliases"
    __table_args__ = (UniqueConstraint("organization_id", "name", name="uq_model_aliases_org_name"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    organization_id: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(256))
    target: Mapped[str] = mapped_column(String(600))
    """A real model name (base, `ft:…`, checkpoint name or `ftckpt-…` id), never another alias."""
    created_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)


# --- uploads (0008) ---
class UploadRow(Base):
    """An Upload (services/uploads.py): a file sent in parts, assembled into a File row on completion.

    `status` is what was decided (pending, completed, cancelled, expired); a pending upload past `expires_at`
    is shown as expired even before the sweep records it, so the sweep only frees its parts' bytes."""

    __tablename__ = "uploads"
    __table_args__ = (Index("ix_uploads_status_expires", "status", "expires_at"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    organization_id: Mapped[str] = mapped_column(String(64), index=True)
    project: Mapped[str | None] = mapped_column(String(64), nullable=True)
    filename: Mapped[str] = mapped_column(String(512))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    """The size the client declared; the parts named at completion must add up to it."""
    mime_type: Mapped[str] = mapped_column(String(255))
    file_expires_after_seconds: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    """`expires_after.seconds` of the request: the File made on completion expires that long after it is made."""
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    file_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """The File made on completion."""


class UploadPartRow(Base):
    """One part of an upload; its bytes are the blob whose key is the part's id."""

    __tablename__ = "upload_parts"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    upload_id: Mapped[str] = mapped_column(ForeignKey("uploads.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    bytes: Mapped[int] = mapped_column(BigInteger)


# --- webhooks (0009) ---


class WebhookEndpointRow(Base):
    """A URL an organization's job events are POSTed to, added by the operator (`openft webhooks add`), never
    through the API: tenants cannot make the server call arbitrary addresses. The secret is kept as it is
    (`whsec_…`), because the server signs every delivery with it (docs: README, Webhooks)."""

    __tablename__ = "webhook_endpoints"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    url: Mapped[str] = mapped_column(Text)
    secret: Mapped[str] = mapped_column(String(128))
    event_types: Mapped[list[Any]] = mapped_column(JSON)
    """The event types sent to it (`fine_tuning.job.succeeded`, …)."""
    created_at: Mapped[int] = mapped_column(BigInteger)


class WebhookDeliveryRow(Base):
    """One event for one endpoint: the outbox row, written in the transaction that changed the job's status, so
    an event exists exactly when its transition committed. `body` is the exact JSON sent on every try (the
    signature covers it); `next_attempt_at` is both the retry time and the lease of a deliverer that claimed it."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), index=True)
    event_id: Mapped[str] = mapped_column(String(64), index=True)
    """`evt_…`: the event's id in the body and the `webhook-id` header, the same on every try and endpoint."""
    event_type: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str] = mapped_column(String(64), index=True)
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    """`pending` (waiting for its next try, or being tried), `delivered` (a 2xx answer) or `failed` (gave up)."""
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    """Tries claimed so far; also the fencing token of the deliverer holding the current try."""
    next_attempt_at: Mapped[float] = mapped_column(Float)
    delivered_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    last_status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)


class WebhookAttemptRow(Base):
    """One try of a delivery: the HTTP status the receiver answered, or why no answer came."""

    __tablename__ = "webhook_delivery_attempts"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True)
    attempted_at: Mapped[float] = mapped_column(Float)
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    duration_ms: Mapped[int] = mapped_column(Integer)


# --- checkpoint permissions (0010) ---
class CheckpointPermissionRow(Base):
    """A checkpoint shared by its organization with a project of another organization (`<org>/<project>`),
    whose keys may then use it for inference and as the base of new jobs (services/checkpoint_permissions.py)."""

    __tablename__ = "checkpoint_permissions"
    __table_args__ = (UniqueConstraint("checkpoint_id", "project_id", name="uq_checkpoint_permissions_project"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    checkpoint_id: Mapped[str] = mapped_column(
        ForeignKey("fine_tuning_job_checkpoints.id", ondelete="CASCADE"), index=True
    )
    organization_id: Mapped[str] = mapped_column(String(64), index=True)
    """The organization that owns the checkpoint and granted the permission."""
    project_id: Mapped[str] = mapped_column(String(160), index=True)
    created_at: Mapped[int] = mapped_column(BigInteger)


# --- responses (0011) ---
class ResponseRow(Base):
    """A stored Responses API answer (`store: true`): the response as first answered, the items it was given
    (`GET /responses/{id}/input_items`) and the whole conversation before its output, which a later request's
    `previous_response_id` continues (services/responses.py)."""

    __tablename__ = "responses"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    organization_id: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    response: Mapped[dict[str, Any]] = mapped_column(JSON)
    input_items: Mapped[list[Any]] = mapped_column(JSON)
    context_items: Mapped[list[Any]] = mapped_column(JSON)
    """This response's conversation before its output: its predecessors' items and outputs, then its input."""
    background_status: Mapped[str | None] = mapped_column(String(16), nullable=True)  # 0013
    """A background response's status, written with `response` and fencing its updates (a cancelled one stays
    cancelled); None for a response answered in its request."""
    lease_expires_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # 0013
    """Until when (epoch seconds) the server running this background response vouches for it; renewed while
    it runs. Past it, the server is taken for dead and the response for failed."""


# --- batches (0012) ---
class BatchRow(Base):
    """A Batch API batch (services/batches.py), answered by a worker (jobs/batches.py) that claims it like a
    training job: `worker_id` + `lease_expires_at` say who holds it, `attempt` is the fencing token."""

    __tablename__ = "batches"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    organization_id: Mapped[str] = mapped_column(String(64), index=True)
    endpoint: Mapped[str] = mapped_column(String(64))
    input_file_id: Mapped[str] = mapped_column(String(64))
    completion_window: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), index=True)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, nullable=True)
    errors: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    output_file_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_file_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    total: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger)
    in_progress_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    finalizing_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    completed_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    failed_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    expired_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    cancelling_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    cancelled_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    worker_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    attempt: Mapped[int] = mapped_column(Integer, default=0)


class BatchLineRow(Base):
    """One answered line of a batch: recorded (under the claim's fencing check) before it counts, so a worker
    that dies loses no finished line, and unique per line, so none is ever answered twice in the output."""

    __tablename__ = "batch_lines"
    __table_args__ = (UniqueConstraint("batch_id", "line", name="uq_batch_lines_line"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), index=True)
    line: Mapped[int] = mapped_column(Integer)
    """The line's number in the input file (1-based, as OpenAI's errors count them)."""
    ok: Mapped[bool] = mapped_column(Boolean)
    """Whether it goes to the output file (status 200) or the error file."""
    record: Mapped[dict[str, Any]] = mapped_column(JSON)
    """The output line as written: id, custom_id, response {status_code, request_id, body}, error."""


# --- evals (0014) ---
class EvalRow(Base):
    """An Evals API eval (services/evals.py): the data's item schema and the testing criteria (graders) every
    run of it is graded with, kept as the wire shapes."""

    __tablename__ = "evals"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    organization_id: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(256))
    data_source_config: Mapped[dict[str, Any]] = mapped_column(JSON)
    testing_criteria: Mapped[list[Any]] = mapped_column(JSON)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger)


class EvalRunRow(Base):
    """A run of an eval, carried out by a worker (jobs/eval_runs.py) that claims it like a batch: `worker_id` +
    `lease_expires_at` say who holds it, `attempt` is the fencing token. The counts are updated in the same
    transaction as the output items they count, so they never disagree with the items."""

    __tablename__ = "eval_runs"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    eval_id: Mapped[str] = mapped_column(ForeignKey("evals.id", ondelete="CASCADE"), index=True)
    organization_id: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(256))
    status: Mapped[str] = mapped_column(String(16), index=True)
    model: Mapped[str | None] = mapped_column(String(256), nullable=True)
    data_source: Mapped[dict[str, Any]] = mapped_column(JSON)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, nullable=True)
    report_url: Mapped[str] = mapped_column(String(512))
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    result_counts: Mapped[dict[str, Any]] = mapped_column(JSON)
    per_testing_criteria_results: Mapped[list[Any]] = mapped_column(JSON)
    per_model_usage: Mapped[dict[str, Any]] = mapped_column(JSON)
    """Token usage by model name (the model sampled, and any judge model of the criteria)."""
    created_at: Mapped[int] = mapped_column(BigInteger)
    worker_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    attempt: Mapped[int] = mapped_column(Integer, default=0)


class EvalRunItemRow(Base):
    """One graded item of a run (its output item): recorded under the claim's fencing check before it counts,
    and unique per item, so a worker that dies loses no graded item and none is ever graded twice."""

    __tablename__ = "eval_run_items"
    __table_args__ = (UniqueConstraint("run_id", "item_index", name="uq_eval_run_items_index"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("eval_runs.id", ondelete="CASCADE"), index=True)
    item_index: Mapped[int] = mapped_column(Integer)
    """The item's place in the data source (0-based: the output item's `datasource_item_id`)."""
    status: Mapped[str] = mapped_column(String(16))
    """`pass`, `fail`, or `error` (sampling or a grader failed on this item)."""
    record: Mapped[dict[str, Any]] = mapped_column(JSON)
    """The output item as answered (less the ids and times kept in columns)."""
    created_at: Mapped[int] = mapped_column(BigInteger)
