"""Check an uploaded file as training data (`GET /v1/files/{id}/check`): the report `openft data check --json` prints.

The dashboard calls it right after an upload, so it must be quick and must not train: the time estimate
comes from the throughput table (`openft.datacheck.estimate.table_throughput`), never from a measured run.
The tokenizer is the model's own (loaded once per model folder and kept), so token counts are the
trainer's. Checks run one at a time: a Hugging Face fast tokenizer must not be used by two threads at once.

A check runs under a budget (`OPENFT_DATA_CHECK_SECONDS`, `OPENFT_DATA_CHECK_MAX_BYTES`): past it the report
says `truncated: true` and covers the part checked, so an uploaded file cannot hold a server thread (or
the check lock) for long. A check that cannot get the lock within one budget is answered 429.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from openft.basemodels import BaseModelUnavailable, ModelCatalog
from openft.datacheck import CheckBudget, check_file, default_model, table_throughput
from openft.db import repositories as repo
from openft.db.engine import read_only_sessions
from openft.errors import InvalidRequest, ModelNotFound, NotFound, RateLimited, ServiceUnavailable
from openft.services.models import Caller, ModelService
from openft.storage import BlobStore
from openft.trainer_contract import TrainingMethod
from openft.training.memory_plan import Mode


class DataCheckService:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        store: BlobStore,
        catalog: ModelCatalog,
        *,
        budget: CheckBudget | None = None,
        models: ModelService | None = None,
    ):
        """`models`: resolves a `model` that is not a base model's name (an alias, a fine-tune to continue from)
        to the base whose tokenizer and context the check uses."""
        self._models = models
        self._reads = read_only_sessions(sessions)  # the file lookup never takes SQLite's write lock
        self._store = store
        self._catalog = catalog
        self._lock = threading.Lock()
        self.budget = budget or CheckBudget(seconds=30.0, max_bytes=64 * 1024 * 1024)

    def check(
        self,
        who: Caller | str | None,
        file_id: str,
        *,
        model: str | None,
        method: TrainingMethod | None,
        fine_tuning_mode: Mode = "lora",
    ) -> dict[str, Any]:
        """The report of `file_id` (the caller's organization's, else 404) as training data for `model`, with the
        memory a `fine_tuning_mode` job would need."""
        with self._reads.begin() as session:
            row = repo.get_file(session, Caller.of(who).scope, file_id)
            if row is None:
                raise NotFound(f"No such File object: {file_id}", param="file_id")
            filename = row.filename
        path = self._store.local_path(file_id)
        if not path.is_file():  # deleted between the lookup and now
            raise NotFound(f"No such File object: {file_id}", param="file_id")
        name = model or default_model(self._catalog)
        if name is not None and self._catalog.get(name) is None and self._models is not None:
            with contextlib.suppress(ModelNotFound):  # a name nobody made: the error below names it
                name = self._models.resolve(who, name).base_name
        info = self._catalog.get(name) if name else None
        if info is None or name is None:
            raise InvalidRequest(
                f"The model {name!r} is not a model of this server (see GET /v1/models).",
                param="model",
                code="model_not_found",
            )
        if info.source == "hub" and info.path is None:  # a check must not download a whole model for its tokenizer
            raise InvalidRequest(
                f"The model {name!r} is not in this server's Hugging Face cache yet; a job on it downloads it.",
                param="model",
                code="model_not_found",
            )
        try:
            folder = self._catalog.materialize(info)
        except BaseModelUnavailable as exc:
            raise ServiceUnavailable(str(exc)) from exc
        wait = self.budget.seconds if self.budget.seconds is not None else -1
        if not self._lock.acquire(timeout=wait):
            raise RateLimited("Another data check is running; try again shortly.", retry_after=wait)
        try:
            report = check_file(
                path,
                model=name,
                tokenizer_folder=folder,
                context_length=info.context_length,
                method=method,
                file_id=file_id,
                filename=filename,
                throughput=table_throughput(folder),
                fine_tuning_mode=fine_tuning_mode,
                budget=self.budget,
            )
        finally:
            self._lock.release()
        return report.to_json()
