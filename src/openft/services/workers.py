"""A worker process without the API: what `openft worker` runs next to `openft serve --no-worker`.

It needs only the database, the file store and the model catalog (no inference engine, no API key), and
applies the migrations on start like the server does, so workers and server may start in any order: on
PostgreSQL an advisory lock makes concurrent starts migrate one at a time (db/migrate.py), on SQLite the
database's write lock does.
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from openft.basemodels import ModelCatalog
from openft.jobs.batches import BatchRunner, LineAnswerer
from openft.jobs.eval_runs import EvalRunRunner, EvalSampler
from openft.jobs.worker import SHUTDOWN_GRACE_SECONDS, Worker
from openft.services.data_folder import open_database
from openft.services.files import FileService
from openft.settings import Settings
from openft.storage import open_blob_store

if TYPE_CHECKING:
    from openft.services.container import WorkerInference

log = logging.getLogger(__name__)


@dataclass
class WorkerProcess:
    worker: Worker
    engine: Engine

    def run_until(self, stop: threading.Event, force: threading.Event, grace: float = SHUTDOWN_GRACE_SECONDS) -> None:
        """Run jobs until `stop` is set; then stop gracefully (trainers checkpoint, jobs go back to the queue),
        cutting the wait for checkpoints short once `force` is set."""
        self.worker.start()
        try:
            while not stop.wait(0.5):
                pass
            log.info("worker %s stopping: asking trainers to checkpoint", self.worker.worker_id)

            def cut_short() -> None:
                if force.wait():
                    self.worker.force_stop()

            watcher = threading.Thread(target=cut_short, daemon=True)
            watcher.start()
            self.worker.stop(timeout=grace)
        finally:
            self.engine.dispose()


def build_worker_process(settings: Settings, *, worker_id: str | None = None) -> WorkerProcess:
    """Open the data folder and its database (services/data_folder.py), and wire a worker (not started)."""
    database = open_database(settings)  # refuses a data folder that belongs to another database
    try:  # as services/container.py open_store (not imported: it pulls in the inference engine)
        store = open_blob_store(
            settings.storage_url,
            files_dir=settings.files_dir,
            cache_dir=settings.cache_dir / "blobs",
            endpoint_url=settings.s3_endpoint_url,
        )
    except BaseException:
        database.engine.dispose()
        raise
    files = FileService(database.sessions, store)
    sessions = database.sessions

    shared: list[WorkerInference] = []
    lock = threading.Lock()

    def inference() -> WorkerInference:  # the engine is imported and built only when a batch or run is claimed
        from openft.services.container import WorkerInference

        with lock:
            if not shared:
                shared.append(WorkerInference(settings, sessions, files))
            return shared[0]

    def answerer() -> LineAnswerer:
        return inference().line_answerer()

    runner = BatchRunner(
        sessions,
        files,
        answerer,
        worker_id=f"batches-{worker_id or uuid.uuid4().hex[:8]}",
        lease_seconds=settings.lease_seconds,
        concurrency=settings.batch_concurrency,
    )

    def sampler() -> EvalSampler:
        return inference().eval_sampler()

    eval_runs = EvalRunRunner(
        sessions,
        files,
        sampler,
        worker_id=f"evals-{worker_id or uuid.uuid4().hex[:8]}",
        lease_seconds=settings.lease_seconds,
        concurrency=settings.batch_concurrency,
    )
    worker = Worker(
        settings,
        sessions,
        files,
        ModelCatalog.from_settings(settings),
        worker_id=worker_id,
        batches=runner,
        eval_runs=eval_runs,
    )
    return WorkerProcess(worker=worker, engine=database.engine)
