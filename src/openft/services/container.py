"""Builds everything one openft process needs from `Settings`: database, storage, catalog, services,
worker. The API's lifespan and the CLI both use it, so they are wired the same way."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from openft import ids
from openft.basemodels import ModelCatalog
from openft.datacheck import CheckBudget
from openft.db import repositories as repo
from openft.embeddings import LocalEmbedder
from openft.fsutil import atomic_write_text
from openft.inference.backends import ServingEngine, choose_engine
from openft.jobs.batches import BatchRunner, LineAnswerer
from openft.jobs.eval_runs import EvalRunRunner, EvalSampler
from openft.jobs.worker import Worker
from openft.services.auth import (
    KEY_PREFIX,
    Authenticator,
    KeyAuthenticator,
    KeyService,
    RateLimiter,
    StaticKeyAuthenticator,
    ensure_organization,
)
from openft.services.background_responses import BackgroundResponses
from openft.services.batches import BatchLineAnswerer, BatchService
from openft.services.checkpoint_permissions import CheckpointPermissionService
from openft.services.data_check import DataCheckService
from openft.services.data_folder import open_database
from openft.services.evals import EvalItemSampler, EvalService
from openft.services.files import FileService
from openft.services.fine_tuning import FineTuningService
from openft.services.graders import GraderService
from openft.services.inference import InferenceService
from openft.services.metrics import Metrics, job_counts_from
from openft.services.models import ModelService
from openft.services.responses import ResponseService
from openft.services.uploads import UploadService
from openft.services.webhook_delivery import WebhookDeliverer, parse_retry_delays
from openft.settings import Settings
from openft.storage import LocalBlobStore, S3BlobStore, folder_mirror, open_blob_store

log = logging.getLogger(__name__)


def load_or_create_api_key(settings: Settings) -> tuple[str, bool]:
    """The key from settings, else the one kept in the data dir, else a new one written there (0600).

    Returns the key and whether it was generated now (so the caller can print it once).
    """
    if settings.api_key:
        return settings.api_key, False
    path = settings.key_file
    if path.exists():
        return path.read_text(encoding="utf-8").strip(), False
    key = KEY_PREFIX + ids.random_token(40)
    atomic_write_text(path, key + "\n", mode=0o600)  # created private: never readable by others, even briefly
    return key, True


class OrganizationNames:
    """An organization's name by id (it goes into fine-tuned model names), looked up once and kept: names do
    not change while a server runs."""

    def __init__(self, sessions: sessionmaker[Session]):
        self._sessions = sessions
        self._names: dict[str, str] = {}

    def __call__(self, org_id: str) -> str:
        if org_id not in self._names:
            with self._sessions.begin() as session:
                row = repo.get_organization(session, org_id)
                self._names[org_id] = row.name if row else org_id
        return self._names[org_id]


@dataclass
class Container:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    store: LocalBlobStore | S3BlobStore
    catalog: ModelCatalog
    files: FileService
    fine_tuning: FineTuningService
    inference: InferenceService
    models: ModelService
    default_org_id: str
    api_key: str
    api_key_generated: bool
    authenticator: Authenticator
    keys: KeyService
    rate_limiter: RateLimiter
    data_check: DataCheckService
    metrics: Metrics
    checkpoint_permissions: CheckpointPermissionService
    worker: Worker | None = None
    uploads: UploadService | None = None
    """The Uploads API; its expiry sweep runs only in a server (`start`). None only in a hand-built container."""
    webhooks: WebhookDeliverer | None = None
    """Delivers the webhook outbox; built here, started only by a server (`start`)."""
    responses: ResponseService | None = None
    """The Responses API (served by `inference`). None only in a hand-built container."""
    batches: BatchService | None = None
    """The Batch API (its batches are answered by the workers, jobs/batches.py). None only in a hand-built container."""
    graders: GraderService | None = None
    """The Graders API (its judges are served by `inference`). None only in a hand-built container."""
    evals: EvalService | None = None
    """The Evals API (its runs are carried out by the workers, jobs/eval_runs.py). None only when hand-built."""

    def start(self) -> None:
        """Begin serving for the long run: sweep orphaned blobs, then start the worker (if any).

        Only a server does this, never a short-lived command (`openft export`): the sweep deletes what the
        database does not know, so it runs only where the data folder was checked to be this database's and
        the process is the one that keeps the folder tidy.
        """
        if swept := self.files.remove_orphan_blobs():
            log.warning("removed %d stored file(s) that no file row points to: %s", len(swept), ", ".join(swept))
        self.metrics.start()  # the loopback /metrics listener, if OPENFT_METRICS_PORT is set
        if self.uploads is not None:
            self.uploads.start()  # expired uploads' parts deleted now and every minute
        if self.worker is not None:
            self.worker.start()
        if self.webhooks is not None:
            self.webhooks.start()

    def close(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        if self.uploads is not None:
            self.uploads.stop()
        if self.webhooks is not None:
            self.webhooks.stop()  # undelivered events stay in the outbox for the next start
        self.metrics.stop()
        self.inference.close()
        self.engine.dispose()


def open_store(settings: Settings) -> LocalBlobStore | S3BlobStore:
    """The blob store `OPENFT_STORAGE_URL` names (the data folder's `files/` when unset); S3 downloads are
    cached under the data folder's cache."""
    return open_blob_store(
        settings.storage_url,
        files_dir=settings.files_dir,
        cache_dir=settings.cache_dir / "blobs",
        endpoint_url=settings.s3_endpoint_url,
    )


def build_engine(settings: Settings, *, on_step: Callable[..., None] | None = None) -> ServingEngine:
    """The serving engine the settings ask for (`OPENFT_INFERENCE_ENGINE`, memory and batch bounds, device):
    the server's, and an `openft worker`'s own when it answers a batch. `on_step` feeds the metrics."""
    return choose_engine(
        settings.inference_engine,
        max_adapters=settings.max_adapters,
        max_adapter_bytes=settings.max_adapter_mb * 1024 * 1024 if settings.max_adapter_mb else None,
        max_model_bytes=int(settings.max_model_memory_gb * 1024**3) if settings.max_model_memory_gb else None,
        kv_cache_bytes=int(settings.kv_cache_gb * 1024**3),
        max_batch_rows=settings.max_batch_rows,
        device=settings.inference_device,
        on_step=on_step,
    )


def build_model_service(
    settings: Settings,
    sessions: sessionmaker[Session],
    catalog: ModelCatalog,
    generator: ServingEngine,
    store: LocalBlobStore | S3BlobStore,
    files: FileService,
) -> ModelService:
    return ModelService(
        sessions,
        catalog,
        generator,
        job_folders=folder_mirror(store, "jobs"),
        forget_checkpoints=files.forget_job_checkpoints,
        model_cache_bytes=int(settings.model_cache_gb * 1024**3),
    )


def ensure_default_org(sessions: sessionmaker[Session], name: str) -> str:
    """The id of the organization the server's own key belongs to (`OPENFT_ORG_NAME`)."""
    return ensure_organization(sessions, name).id


def build_container(settings: Settings, *, with_worker: bool | None = None) -> Container:
    """Open the data folder and its database (services/data_folder.py) and wire the services (and the worker,
    if asked). Nothing is started or swept here: `Container.start` does that for a server."""
    database = open_database(settings)  # DataFolderMismatch before anything is touched if the folder is another's
    engine, sessions = database.engine, database.sessions
    try:
        store = open_store(settings)  # StorageUnavailable here, at start, if the configured bucket cannot be used
    except BaseException:
        engine.dispose()
        raise
    catalog = ModelCatalog.from_settings(settings)
    org_id = ensure_default_org(sessions, settings.org_name)
    key, generated = load_or_create_api_key(settings)
    keys = KeyService(sessions)
    # The engine's stats are read at scrape time (the engine is built next, and reports its steps to the metrics).
    metrics = Metrics(
        engine_stats=lambda: generator.stats(), job_counts=job_counts_from(sessions), port=settings.metrics_port
    )
    generator = build_engine(settings, on_step=metrics.serving.batch)
    files = FileService(sessions, store)
    model_service = build_model_service(settings, sessions, catalog, generator, store, files)
    worker = None
    if settings.run_worker if with_worker is None else with_worker:
        worker = Worker(
            settings,
            sessions,
            files,
            catalog,
            batches=batch_runner(
                settings, sessions, files, lambda: BatchLineAnswerer(inference, model_service, responses)
            ),
            eval_runs=eval_run_runner(
                settings, sessions, files, lambda: EvalItemSampler(inference, model_service, graders)
            ),
        )
    inference = InferenceService(
        model_service,
        generator,
        settings.max_queued_requests,
        request_timeout=settings.request_timeout_seconds,
        metrics=metrics.serving,
    )
    responses = ResponseService(sessions, inference, BackgroundResponses(sessions, settings.response_lease_seconds))
    embed = embedder(settings)
    graders = GraderService(model_service, inference, embed=embed)  # the Graders API's and the eval runs'
    return Container(
        settings=settings,
        engine=engine,
        sessions=sessions,
        store=store,
        catalog=catalog,
        files=files,
        fine_tuning=FineTuningService(
            sessions,
            catalog,
            model_service,
            org_names=OrganizationNames(sessions),
            notify_worker=worker.notify if worker is not None else (lambda: None),
            trains_here=settings.executor == "local",
            embed=embed,
        ),
        inference=inference,
        models=model_service,
        default_org_id=org_id,
        api_key=key,
        api_key_generated=generated,
        # the server's own key is an admin key of the default organization (its holder runs the server)
        authenticator=KeyAuthenticator(StaticKeyAuthenticator(key, org_id, admin=True), keys),
        keys=keys,
        rate_limiter=RateLimiter(),
        data_check=DataCheckService(
            sessions,
            store,
            catalog,
            budget=CheckBudget(settings.data_check_seconds, settings.data_check_max_bytes),
            models=model_service,
        ),
        metrics=metrics,
        checkpoint_permissions=CheckpointPermissionService(sessions),
        worker=worker,
        uploads=UploadService(sessions, store, files, max_total_bytes=settings.max_upload_total_bytes),
        responses=responses,
        batches=BatchService(sessions, notify_worker=worker.notify if worker is not None else None),
        graders=graders,
        evals=EvalService(
            sessions, files, model_service, notify_worker=worker.notify if worker is not None else None, embed=embed
        ),
        webhooks=WebhookDeliverer(
            sessions,
            poll_seconds=settings.webhook_poll_seconds,
            timeout_seconds=settings.webhook_timeout_seconds,
            retry_delays=parse_retry_delays(settings.webhook_retry_seconds),
            retention_seconds=settings.webhook_retention_days * 86400,
        ),
    )


def batch_runner(
    settings: Settings, sessions: sessionmaker[Session], files: FileService, answerer: Callable[[], LineAnswerer]
) -> BatchRunner:
    """The worker's part of the Batch API; `answerer` is built when the worker first claims a batch."""
    return BatchRunner(
        sessions,
        files,
        answerer,
        worker_id=f"batches-{uuid.uuid4().hex[:8]}",
        lease_seconds=settings.lease_seconds,
        concurrency=settings.batch_concurrency,
    )


def embedder(settings: Settings) -> LocalEmbedder | None:
    """text_similarity's `cosine` embeddings: the operator's `OPENFT_EMBEDDING_MODEL`, loaded on first use."""
    return LocalEmbedder(settings.embedding_model) if settings.embedding_model is not None else None


def eval_run_runner(
    settings: Settings, sessions: sessionmaker[Session], files: FileService, sampler: Callable[[], EvalSampler]
) -> EvalRunRunner:
    """The worker's part of the Evals API; `sampler` is built when the worker first claims a run."""
    return EvalRunRunner(
        sessions,
        files,
        sampler,
        worker_id=f"evals-{uuid.uuid4().hex[:8]}",
        lease_seconds=settings.lease_seconds,
        concurrency=settings.batch_concurrency,
    )


class WorkerInference:
    """An inference stack of its own for an `openft worker` process, built on its first batch or eval run (a
    worker that never gets one never loads the engine) and shared by both, so a model is loaded only once."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], files: FileService):
        self._settings = settings
        self._sessions = sessions
        self._files = files
        self._lock = threading.Lock()  # the batch runner and the eval runner may ask at once
        self._built: tuple[InferenceService, ModelService] | None = None

    def _stack(self) -> tuple[InferenceService, ModelService]:
        with self._lock:
            if self._built is None:
                settings = self._settings
                generator = build_engine(settings)
                models = build_model_service(
                    settings,
                    self._sessions,
                    ModelCatalog.from_settings(settings),
                    generator,
                    open_store(settings),
                    self._files,
                )
                inference = InferenceService(
                    models, generator, settings.max_queued_requests, request_timeout=settings.request_timeout_seconds
                )
                self._built = (inference, models)
            return self._built

    def line_answerer(self) -> LineAnswerer:
        inference, models = self._stack()
        return BatchLineAnswerer(inference, models, ResponseService(self._sessions, inference))

    def eval_sampler(self) -> EvalSampler:
        inference, models = self._stack()
        return EvalItemSampler(inference, models, GraderService(models, inference, embed=embedder(self._settings)))
