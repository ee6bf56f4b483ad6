"""One settings object for the server, the worker and the CLI.

Every field can be set by an `OPENFT_*` environment variable (e.g. `OPENFT_DATA_DIR`) or by the
matching `openft serve` flag; flags win over the environment. Paths are resolved to absolute paths
so that subprocesses started from another working directory see the same folders.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OPENFT_", extra="ignore")

    data_dir: Path = Field(default=Path("./openft-data"), description="Database, files, jobs and caches.")
    models_dir: Path | None = Field(
        default=None, description="Folder whose sub-folders holding a Hugging Face causal LM are base models."
    )
    embedding_model: Path | None = Field(
        default=None,
        description="A local Hugging Face encoder folder whose mean-pooled states give text_similarity's `cosine` "
        "(openft/embeddings.py); unset: a cosine grader is a 400.",
    )
    api_key: str | None = Field(default=None, description="The key clients must send; generated when unset.")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; SQLite in the data dir when unset.")
    host: str = "127.0.0.1"
    port: int = 8000
    org_name: str = Field(default="openft", description="Organization name used in fine-tuned model names.")
    max_upload_bytes: int = Field(default=512 * MiB, ge=1, description="Largest accepted upload (bytes).")
    max_upload_total_bytes: int = Field(
        default=8 * 1024 * MiB, ge=1, description="Largest file the Uploads API assembles from parts (bytes)."
    )
    run_worker: bool = Field(default=True, description="Run the job worker inside the server process.")
    worker_poll_seconds: float = Field(default=0.5, gt=0)
    lease_seconds: float = Field(
        default=30.0, gt=0, description="A job's claim expires this long after the last heartbeat."
    )
    max_jobs: int = Field(default=1, ge=1, description="Training processes one worker runs at once.")
    response_lease_seconds: int = Field(
        default=30,
        ge=3,
        description="A background response whose server stops renewing it this long is failed (Responses API).",
    )
    batch_concurrency: int = Field(
        default=16, ge=1, description="Lines of a batch one worker sends to the engine at once (Batch API)."
    )
    train_threads: int | None = Field(default=None, ge=1, description="torch threads per training process.")
    keep_checkpoints: int = Field(default=3, ge=1, description="Checkpoints kept per job (newest).")
    checkpoint_every_steps: int | None = Field(
        default=None, ge=0, description="Also checkpoint every N steps (crash recovery); 0 or unset: off."
    )
    checkpoint_every_minutes: float | None = Field(
        default=10.0, ge=0, description="Also checkpoint after this many minutes without one; 0: off."
    )
    max_adapters: int = Field(default=32, ge=1, description="LoRA adapters kept in memory (least recently used go).")
    max_adapter_mb: int | None = Field(default=2048, ge=1, description="Memory bound of loaded adapters (MiB).")
    max_model_memory_gb: float | None = Field(
        default=None,
        gt=0,
        description="Memory bound (GiB) of every model loaded for inference (bases, fine-tunes, checkpoints, "
        "adapters); least recently used idle ones are unloaded. Unset: half of this machine's memory.",
    )
    max_queued_requests: int = Field(
        default=64,
        ge=0,
        description="Chat/completion requests that may wait for room in one model's batch; more get 429 "
        "`rate_limit_exceeded` with `Retry-After`.",
    )
    kv_cache_gb: float = Field(
        default=2.0,
        gt=0,
        description="KV cache (GiB) of each loaded model's running batch, on its device; requests that would not fit "
        "wait for room, one that could not fit even alone gets 400.",
    )
    max_batch_rows: int = Field(
        default=64, ge=1, description="Rows (requests × n) one model decodes together at most; more wait."
    )
    request_timeout_seconds: float = Field(
        default=600.0,
        gt=0,
        description="A chat/completion request still waiting for room in its model's batch after this long gets 503 "
        "`service_unavailable` with `Retry-After`.",
    )
    inference_engine: str = Field(
        default="own",
        pattern="^(own|vllm|auto)$",
        description="`own` (openft's batching engine), `vllm` (needs `pip install openft[vllm]` and a GPU) or `auto` "
        "(vLLM when it imports and a GPU is present, else own).",
    )
    inference_device: str | None = Field(
        default=None,
        description="Where the own engine serves models (`cpu`, `cuda`, `cuda:1`); unset: the first GPU if CUDA "
        "works, else the CPU.",
    )
    hub_models: str = Field(
        default="",
        description="Comma-separated Hugging Face ids (fnmatch patterns, e.g. `Qwen/*`) that `model` may name; "
        "empty: no hub model at all.",
    )
    max_model_gb: float = Field(
        default=40.0, gt=0, description="Largest hub model (GB of files to fetch) a job may download."
    )
    auth_failure_limit: int = Field(
        default=30,
        ge=0,
        description="Wrong API keys one client address may send per `auth_failure_window_seconds` before they are "
        "answered 429 (a correct key is still accepted); 0: no limit.",
    )
    auth_failure_window_seconds: float = Field(default=60.0, gt=0, description="Window of `auth_failure_limit`.")

    job_folder_retention_hours: float = Field(
        default=24.0,
        ge=0,
        description="A failed or cancelled job's folder is removed this long after it finished; a succeeded job's "
        "resume state, training data copy and log too (its model, checkpoints' weights and result file stay).",
    )
    data_check_seconds: float = Field(
        default=30.0,
        gt=0,
        description="Time budget of one `GET /v1/files/{id}/check`; past it the report covers the part checked "
        "(`truncated: true`).",
    )
    data_check_max_bytes: int = Field(
        default=64 * MiB,
        ge=1,
        description="Bytes of a file one `GET /v1/files/{id}/check` reads (its parsed examples are held in memory).",
    )
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Also serve `GET /metrics` without a key on 127.0.0.1 at this port (a local Prometheus or "
        "sidecar scrapes it); 0: any free port (logged). Unset: only `/metrics` on the API port, admin keys only.",
    )
    db_retry_seconds: float = Field(
        default=60.0,
        ge=0,
        description="How long the worker retries a transient database error (locked, connection lost) before it "
        "stops a trainer and queues its job again from its last checkpoint.",
    )
    storage_url: str | None = Field(
        default=None,
        description="Where files, job data, checkpoints, models and result files are kept: `s3://bucket/prefix` "
        "for any S3-compatible store (boto3; credentials from the usual AWS variables). Unset: the data folder.",
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="The S3 endpoint for a store other than AWS (MinIO, SeaweedFS, Ceph…)."
    )
    model_cache_gb: float = Field(
        default=20.0,
        gt=0,
        description="With an object store: disk bound (GiB) of fine-tuned models' folders restored from it for "
        "serving; least recently used go first (restored again when asked).",
    )
    executor: str = Field(
        default="local",
        pattern="^(local|ray)$",
        description="Where a worker runs its jobs: `local` (a subprocess on this machine; several ranks with "
        "`compute.workers`) or `ray` (one Ray Train run per job on the cluster at `ray_address`).",
    )
    ray_address: str | None = Field(
        default=None, description="The Ray cluster of `executor=ray` (`HOST:PORT` of its GCS, or `auto`)."
    )
    webhook_poll_seconds: float = Field(
        default=1.0, gt=0, description="How often the server looks for webhook deliveries that are due."
    )
    webhook_timeout_seconds: float = Field(
        default=10.0, gt=0, description="A webhook POST without an answer after this long counts as a failed try."
    )
    webhook_retry_seconds: str = Field(
        default="5,30,120,600,1800,3600,7200,14400,28800,28800",
        pattern=r"^\s*\d+(\.\d+)?\s*(,\s*\d+(\.\d+)?\s*)*$",
        description="Delays (seconds, comma-separated) before each retry of a webhook delivery that got no 2xx "
        "answer; after the last one the delivery is `failed` (default: 11 tries over about 24 hours).",
    )
    webhook_retention_days: float = Field(
        default=30.0,
        gt=0,
        description="Delivered and failed webhook deliveries (and their attempts) are forgotten this long after "
        "their event; pending ones are kept until they end.",
    )

    @field_validator("data_dir", "models_dir", mode="after")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        return value.expanduser().resolve() if value is not None else None

    @field_validator("embedding_model", mode="after")
    @classmethod
    def _model_folder(cls, value: Path | None) -> Path | None:
        """A wrong path stops the server at start, not every cosine grade later."""
        if value is None:
            return None
        folder = value.expanduser().resolve()
        if not (folder / "config.json").is_file():
            raise ValueError(f"{folder} is not a Hugging Face model folder (no config.json)")
        return folder

    @field_validator("database_url", mode="after")
    @classmethod
    def _normalise_url(cls, value: str | None) -> str | None:
        """Accept the `postgres://` and `postgresql://` spellings and use the psycopg 3 driver."""
        if value is None:
            return None
        for prefix in ("postgres://", "postgresql://"):
            if value.startswith(prefix):
                return "postgresql+psycopg://" + value[len(prefix) :]
        return value

    @property
    def hub_model_patterns(self) -> list[str]:
        """`hub_models` split on commas, blanks dropped."""
        return [pattern.strip() for pattern in self.hub_models.split(",") if pattern.strip()]

    # Derived locations -------------------------------------------------------------------------
    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'openft.db'}"

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

    @property
    def jobs_dir(self) -> Path:
        """Job folders. With an object store (`storage_url`) they are a cache: the job's checkpoints and, once it
        succeeds, its artefacts are in the store, and a missing folder is filled from there when needed."""
        return self.cache_dir / "jobs" if self.storage_url else self.data_dir / "jobs"

    @property
    def cache_dir(self) -> Path:
        """Converted base models (e.g. the built-in SmolLM2 from GGUF) live here."""
        return self.data_dir / "cache"

    @property
    def key_file(self) -> Path:
        return self.data_dir / "api_key"
