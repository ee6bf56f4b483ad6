"""The Batch API: batches of chat, completion or Responses requests answered by the workers.

The API side only records a batch (`validating`) and answers for it; a worker claims it and does the rest
(jobs/batches.py): it checks the input file, answers each line through this module's `BatchLineAnswerer`
(the same inference and Responses services the API serves, with the batch's organization as caller, several
lines at once so they share the engine's continuous batch) and writes the output files at `finalizing`.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from openft import ids
from openft.db import batches as batch_repo
from openft.db import repositories as repo
from openft.db.engine import read_only_sessions
from openft.db.tables import BatchRow
from openft.errors import (
    InvalidJobState,
    InvalidRequest,
    NotFound,
    OpenFTError,
    PayloadTooLarge,
    PermissionDenied,
    QuotaExceeded,
    RateLimited,
    ServiceUnavailable,
)
from openft.protocol.batches import (
    BATCH_ENDPOINTS,
    Batch,
    BatchError,
    BatchErrors,
    BatchRequestCounts,
    CreateBatchRequest,
    ListBatchesResponse,
)
from openft.protocol.chat import ChatCompletionRequest
from openft.protocol.completions import CompletionRequest
from openft.protocol.responses import CreateResponseRequest
from openft.services.inference import InferenceService
from openft.services.models import Caller, ModelService
from openft.services.responses import ResponseService
from openft.services.work_answerer import WorkAnswerer

COMPLETION_WINDOW = "24h"
WINDOW_SECONDS = 24 * 3600
_STATUS_OF: list[tuple[type[OpenFTError], int, str]] = [
    (InvalidRequest, 400, "invalid_request_error"),
    (PermissionDenied, 403, "invalid_request_error"),
    (NotFound, 404, "invalid_request_error"),
    (InvalidJobState, 409, "invalid_request_error"),
    (PayloadTooLarge, 413, "invalid_request_error"),
    (QuotaExceeded, 429, "insufficient_quota"),
    (RateLimited, 429, "requests"),
    (ServiceUnavailable, 503, "server_error"),
]
"""A failed line's HTTP status and error type, as the API would have answered the same request alone
(api/errors.py's table, which this layer may not import)."""


def batch_object(row: BatchRow, counts: tuple[int, int]) -> Batch:
    errors = BatchErrors(data=[BatchError(**e) for e in row.errors]) if row.errors else None
    return Batch(
        id=row.id,
        endpoint=row.endpoint,
        errors=errors,
        input_file_id=row.input_file_id,
        completion_window=row.completion_window,
        status=row.status,  # type: ignore[arg-type]
        output_file_id=row.output_file_id,
        error_file_id=row.error_file_id,
        created_at=row.created_at,
        in_progress_at=row.in_progress_at,
        expires_at=row.expires_at,
        finalizing_at=row.finalizing_at,
        completed_at=row.completed_at,
        failed_at=row.failed_at,
        expired_at=row.expired_at,
        cancelling_at=row.cancelling_at,
        cancelled_at=row.cancelled_at,
        request_counts=BatchRequestCounts(total=row.total, completed=counts[0], failed=counts[1]),
        metadata=row.metadata_,
    )


class BatchService:
    def __init__(self, sessions: sessionmaker[Session], *, notify_worker: Any = None):
        self._sessions = sessions
        self._reads = read_only_sessions(sessions)
        self._notify = notify_worker or (lambda: None)

    def create(self, org_id: str, request: CreateBatchRequest) -> Batch:
        if request.endpoint not in BATCH_ENDPOINTS:
            raise InvalidRequest(
                f"Invalid endpoint '{request.endpoint}': must be one of {', '.join(BATCH_ENDPOINTS)}.",
                param="endpoint",
            )
        if request.completion_window != COMPLETION_WINDOW:
            raise InvalidRequest(
                f"Invalid completion_window '{request.completion_window}': only '24h' is supported.",
                param="completion_window",
            )
        if request.output_expires_after is not None:  # refused rather than silently not honoured
            raise InvalidRequest(
                "output_expires_after is not supported: a batch's output files do not expire.",
                param="output_expires_after",
            )
        if request.metadata is not None and len(request.metadata) > 16:
            raise InvalidRequest("metadata holds at most 16 keys.", param="metadata")
        now = int(time.time())
        with self._sessions.begin() as session:
            file = repo.get_file(session, org_id, request.input_file_id)
            if file is None:
                raise NotFound(f"No such File object: {request.input_file_id}", param="input_file_id")
            if file.purpose != "batch":
                raise InvalidRequest(
                    f"File {request.input_file_id} has purpose '{file.purpose}'; a batch's input needs 'batch'.",
                    param="input_file_id",
                )
            row = BatchRow(
                id=f"batch_{ids.random_token()}",  # OpenAI's shape: batch_ and a token
                organization_id=org_id,
                endpoint=request.endpoint,
                input_file_id=request.input_file_id,
                completion_window=request.completion_window,
                status="validating",
                metadata_=request.metadata,
                total=0,
                created_at=now,
                expires_at=now + WINDOW_SECONDS,
                attempt=0,
            )
            session.add(row)
            session.flush()
            batch = batch_object(row, (0, 0))
        self._notify()
        return batch

    def retrieve(self, org_id: str, batch_id: str) -> Batch:
        with self._reads.begin() as session:
            row = batch_repo.get_batch(session, org_id, batch_id)
            if row is None:
                raise NotFound(f"No such batch: {batch_id}", param="batch_id")
            return batch_object(row, batch_repo.line_counts(session, [row.id]).get(row.id, (0, 0)))

    def list(self, org_id: str, *, after: str | None, limit: int) -> ListBatchesResponse:
        if not 1 <= limit <= 100:
            raise InvalidRequest("limit must be between 1 and 100.", param="limit")
        with self._reads.begin() as session:
            rows, more = batch_repo.list_batches(session, org_id, after=after, limit=limit)
            counts = batch_repo.line_counts(session, [r.id for r in rows])
            data = [batch_object(r, counts.get(r.id, (0, 0))) for r in rows]
        return ListBatchesResponse(
            data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None, has_more=more
        )

    def cancel(self, org_id: str, batch_id: str) -> Batch:
        """`cancelling` at once; the worker holding the batch stops taking lines, lets the lines in flight
        finish and writes what was answered (`cancelled`). A batch already over is answered as it is."""
        with self._sessions.begin() as session:
            row = batch_repo.get_batch(session, org_id, batch_id)
            if row is None:
                raise NotFound(f"No such batch: {batch_id}", param="batch_id")
            if row.status in ("validating", "in_progress"):
                row.status = "cancelling"
                row.cancelling_at = int(time.time())
            elif row.status in batch_repo.FINAL_STATUSES and row.status != "cancelled":
                raise InvalidJobState(f"Cannot cancel a batch that is {row.status}.", param="batch_id")
        self._notify()
        return self.retrieve(org_id, batch_id)


def _error_of(exc: OpenFTError) -> tuple[int, dict[str, Any]]:
    status, kind = next(((st, k) for cls, st, k in _STATUS_OF if isinstance(exc, cls)), (500, "server_error"))
    return status, {"error": {"message": exc.message, "type": kind, "param": exc.param, "code": exc.code}}


class BatchLineAnswerer(WorkAnswerer):
    """Answers one line of a batch in-process, as the API would answer the same request alone
    (jobs/batches.py `LineAnswerer`; built on a worker's first batch, services/work_answerer.py)."""

    def __init__(self, inference: InferenceService, models: ModelService, responses: ResponseService | None):
        super().__init__(inference, models)
        self._responses = responses

    async def answer(self, org_id: str, endpoint: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body) of the request; busy engines (429 past the queue, 503) raise `Busy` instead, so
        the line is tried again rather than recorded as failed."""
        who = Caller.of(org_id)
        try:
            if endpoint == "/v1/chat/completions":
                chat = ChatCompletionRequest.model_validate(body)
                if chat.stream:
                    raise InvalidRequest("stream is not supported in a batch.", param="stream")
                return 200, (await self._inference.chat(who, chat)).model_dump(mode="json")
            if endpoint == "/v1/completions":
                completion = CompletionRequest.model_validate(body)
                if completion.stream:
                    raise InvalidRequest("stream is not supported in a batch.", param="stream")
                return 200, (await self._inference.complete(who, completion)).model_dump(mode="json")
            if self._responses is None:
                raise ServiceUnavailable("The Responses API is not available on this server.")
            response = CreateResponseRequest.model_validate(body)
            if response.stream:
                raise InvalidRequest("stream is not supported in a batch.", param="stream")
            answered = await self._responses.create(who, org_id, response)
            return 200, answered.model_dump(mode="json")
        except ValidationError as exc:
            return _error_of(InvalidRequest(f"Invalid request body: {exc.errors()[0].get('msg')}"))
        except (RateLimited, ServiceUnavailable):
            raise
        except OpenFTError as exc:
            return _error_of(exc)


def request_id() -> str:
    return f"req_{uuid.uuid4().hex}"
