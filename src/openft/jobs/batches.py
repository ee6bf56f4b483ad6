"""Answering batches in the worker (the Batch API, services/batches.py), durable like training jobs.

A batch is leased work (jobs/leased_work.py, the claim, the lease and the fencing shared with eval runs): a
worker holds at most one at a time (`BatchRunner.turn`), claimed with db/batches.py `claim_batch`, and a
thread of its own then checks the input file (`validating`), answers the lines (`in_progress`) several at a
time so they share the engine's continuous batch, and writes the output and error files (`finalizing` →
`completed`). The lease is renewed while it works; each renewal also reads whether the batch was cancelled,
and the clock whether it has run out of its 24 h.

Each answered line is recorded (a `batch_lines` row, under the fencing check, unique per line) before it
counts, so a worker killed mid-batch loses no finished line: whoever claims the batch after its lease expired
answers only the lines with no record, and the output file is assembled from the records at the end, one line
per `custom_id`.

`jobs` may not import the inference engine: the lines are answered through `LineAnswerer`, which the service
layer provides (services/batches.py `BatchLineAnswerer`), built only when a batch is first claimed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy.orm import Session, sessionmaker

from openft.db import batches as batch_repo
from openft.jobs.leased_work import Claim, LeasedRunner, when_room
from openft.storage import StoredBlob

log = logging.getLogger(__name__)


class LineAnswerer(Protocol):
    def model_problem(self, org_id: str, model: str) -> str | None:
        """Why the organization may not use `model` (None: it may)."""
        ...

    async def answer(self, org_id: str, endpoint: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """The HTTP status and body the API would answer the request with; raises RateLimited or
        ServiceUnavailable when the engine has no room now."""
        ...


class BatchFiles(Protocol):
    def snapshot(self, org_id: str, file_id: str, dest: Path) -> bool: ...

    def put_result_file(self, path: Path) -> StoredBlob: ...

    def discard(self, file_id: str) -> None: ...


@dataclass(frozen=True)
class InputLine:
    line: int
    custom_id: str
    body: dict[str, Any]


def parse_input(data: bytes, endpoint: str) -> tuple[list[InputLine], list[dict[str, Any]]]:
    """The requests of a batch's input file, and its problems as OpenAI reports them (code, message, param,
    1-based line). Any problem fails the whole batch before a line is answered."""
    lines: list[InputLine] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()

    def problem(code: str, message: str, line: int, param: str | None = None) -> None:
        errors.append({"code": code, "message": message, "param": param, "line": line})

    text_lines = data.decode("utf-8", errors="replace").splitlines()
    for number, text in enumerate(text_lines, start=1):
        if not text.strip():
            continue
        try:
            item = json.loads(text)
        except ValueError:
            problem("invalid_json_line", "This line is not parseable as valid JSON.", number)
            continue
        if not isinstance(item, dict):
            problem("invalid_json_line", "This line is not a JSON object.", number)
            continue
        custom_id = item.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            problem("missing_required_parameter", "Missing required parameter: 'custom_id'.", number, "custom_id")
            continue
        if item.get("method") != "POST":
            problem("invalid_method", "The method must be 'POST'.", number, "method")
            continue
        if item.get("url") != endpoint:
            problem(
                "invalid_url",
                f"The URL provided for this request does not match the batch endpoint {endpoint}.",
                number,
                "url",
            )
            continue
        body = item.get("body")
        if not isinstance(body, dict):
            problem("invalid_request", "The body must be a JSON object.", number, "body")
            continue
        if not isinstance(body.get("model"), str):
            problem("missing_required_parameter", "Missing required parameter: 'body.model'.", number, "body.model")
            continue
        if custom_id in seen:
            problem("duplicate_custom_id", f"The custom_id '{custom_id}' is duplicated.", number, "custom_id")
            continue
        seen.add(custom_id)
        lines.append(InputLine(number, custom_id, body))
    if not errors and not lines:
        problem("empty_file", "The input file has no requests.", 1)
    return lines, errors


@dataclass(kw_only=True)
class _Claim(Claim):
    org_id: str
    endpoint: str
    input_file_id: str


Answered = tuple[int, bool, dict[str, Any]]
"""A line as recorded (db/batches.py `record_lines`): its number, whether it was answered with status 200, and
its output-file record."""


class BatchRunner(LeasedRunner[_Claim, LineAnswerer]):
    """One batch at a time per worker, in a thread of its own (`turn` claims; `stop` lets it hand back)."""

    kind = "batch"
    cancel_status = "cancelling"

    def __init__(
        self,
        sessions: sessionmaker[Session],
        files: BatchFiles,
        answerer: Callable[[], LineAnswerer],
        *,
        worker_id: str,
        lease_seconds: float,
        concurrency: int,
    ):
        super().__init__(sessions, answerer, worker_id=worker_id, lease_seconds=lease_seconds, concurrency=concurrency)
        self._files = files

    def _claim(self) -> _Claim | None:
        with self._sessions.begin() as session:
            row = batch_repo.claim_batch(session, worker_id=self._worker_id, lease_seconds=self._lease)
            if row is None:
                return None
            return _Claim(
                id=row.id,
                attempt=row.attempt,
                status=row.status,
                deadline=row.expires_at,
                org_id=row.organization_id,
                endpoint=row.endpoint,
                input_file_id=row.input_file_id,
            )

    def _renew(self, session: Session, claim: _Claim) -> str | None:
        row = batch_repo.renew_lease(session, claim.id, claim.attempt, self._lease)
        return None if row is None else row.status

    async def _work(self, claim: _Claim) -> None:
        answerer = await self._tool()
        lines, errors = await asyncio.to_thread(self._read_input, claim)
        if claim.status == "validating":
            if not errors:
                errors = await asyncio.to_thread(self._model_problems, answerer, claim.org_id, lines)
            now = int(time.time())
            if errors:
                await self._db(
                    lambda s: batch_repo.set_fenced(
                        s,
                        claim.id,
                        claim.attempt,
                        status="failed",
                        failed_at=now,
                        errors=errors,
                        worker_id=None,
                        lease_expires_at=None,
                    )
                )
                return
            started = await self._db(
                lambda s: batch_repo.set_fenced(
                    s, claim.id, claim.attempt, status="in_progress", in_progress_at=now, total=len(lines)
                )
            )
            if not started:
                return
            claim.status = "in_progress"
        if claim.status == "in_progress":
            await self._answer_all(answerer, claim, lines)
            flags = claim.flags
            if flags.lost:
                return
            if flags.stopping and not (flags.cancelled or flags.expired):
                await self._db(lambda s: batch_repo.set_fenced(s, claim.id, claim.attempt, lease_expires_at=None))
                return
            if flags.cancelled:
                claim.status = "cancelling"
            elif flags.expired:
                claim.status = "expired"
            else:
                now = int(time.time())
                if not await self._db(
                    lambda s: batch_repo.set_fenced(s, claim.id, claim.attempt, status="finalizing", finalizing_at=now)
                ):
                    return
                claim.status = "finalizing"
        final = {"finalizing": "completed", "cancelling": "cancelled", "expired": "expired"}.get(claim.status)
        if final is not None:
            await asyncio.to_thread(self._finalize, claim, lines, final)

    def _read_input(self, claim: _Claim) -> tuple[list[InputLine], list[dict[str, Any]]]:
        with tempfile.TemporaryDirectory(prefix="openft-batch-") as folder:
            path = Path(folder) / "input.jsonl"
            if not self._files.snapshot(claim.org_id, claim.input_file_id, path):
                return [], [
                    {
                        "code": "file_not_found",
                        "message": "The input file was deleted.",
                        "param": "input_file_id",
                        "line": None,
                    }
                ]
            return parse_input(path.read_bytes(), claim.endpoint)

    @staticmethod
    def _model_problems(answerer: LineAnswerer, org_id: str, lines: list[InputLine]) -> list[dict[str, Any]]:
        problems: list[dict[str, Any]] = []
        checked: dict[str, str | None] = {}
        for line in lines:
            model = str(line.body["model"])
            if model not in checked:
                checked[model] = answerer.model_problem(org_id, model)
                if checked[model] is not None:
                    problems.append(
                        {"code": "model_not_found", "message": checked[model], "param": "body.model", "line": line.line}
                    )
        return problems

    async def _answer_all(self, answerer: LineAnswerer, claim: _Claim, lines: list[InputLine]) -> None:
        """Answer the lines with no record yet (jobs/leased_work.py `_work_through`), until the batch halts."""
        done = await self._db(lambda s: batch_repo.answered_lines(s, claim.id))

        async def answer(line: InputLine) -> Answered | None:
            answered = await when_room(
                claim.flags, lambda: answerer.answer(claim.org_id, claim.endpoint, dict(line.body))
            )
            if answered is None:
                return None
            status, body = answered
            record = {
                "id": f"batch_req_{uuid.uuid4().hex}",
                "custom_id": line.custom_id,
                "response": {"status_code": status, "request_id": f"req_{uuid.uuid4().hex}", "body": body},
                "error": None,
            }
            return line.line, status == 200, record

        def record(session: Session, answered: list[Answered]) -> bool:
            return batch_repo.record_lines(session, claim.id, claim.attempt, answered)

        await self._work_through(claim, [line for line in lines if line.line not in done], answer, record)

    def _finalize(self, claim: _Claim, lines: list[InputLine], final: str) -> None:
        """Write the output file (status 200 lines) and the error file (the others, and under `cancelled` or
        `expired` the lines never answered), in input order; then the batch's final status, fenced."""
        with self._sessions.begin() as session:
            records = [(r.line, r.ok, r.record) for r in batch_repo.line_records(session, claim.id)]
        answered = {line for line, _, _ in records}
        output = [record for _, ok, record in records if ok]
        failed = [(line, record) for line, ok, record in records if not ok]
        if final != "completed":
            code = "batch_cancelled" if final == "cancelled" else "batch_expired"
            message = "This line was not executed because the batch was " + (
                "cancelled." if final == "cancelled" else "not completed within 24 hours."
            )
            for line in lines:
                if line.line not in answered:
                    failed.append(
                        (
                            line.line,
                            {
                                "id": f"batch_req_{uuid.uuid4().hex}",
                                "custom_id": line.custom_id,
                                "response": None,
                                "error": {"code": code, "message": message},
                            },
                        )
                    )
        failed.sort(key=lambda pair: pair[0])
        blobs: list[tuple[str, StoredBlob]] = []
        with tempfile.TemporaryDirectory(prefix="openft-batch-") as folder:
            for name, records_ in (("output", output), ("errors", [r for _, r in failed])):
                if not records_:
                    continue
                path = Path(folder) / f"{claim.id}_{name}.jsonl"
                path.write_text("".join(json.dumps(r) + "\n" for r in records_), encoding="utf-8")
                blobs.append((name, self._files.put_result_file(path)))
        now = int(time.time())
        with self._sessions.begin() as session:
            if batch_repo.holds(session, claim.id, claim.attempt):
                values: dict[str, Any] = {
                    "status": final,
                    f"{final}_at": now,
                    "worker_id": None,
                    "lease_expires_at": None,
                }
                for name, blob in blobs:
                    file_id = batch_repo.add_output_file(
                        session, blob, org_id=claim.org_id, filename=f"{claim.id}_{name}.jsonl"
                    )
                    values["output_file_id" if name == "output" else "error_file_id"] = file_id
                batch_repo.set_fenced(session, claim.id, claim.attempt, **values)
                return
        for _, blob in blobs:  # the claim was lost meanwhile: the new holder writes its own files
            self._files.discard(blob.key)
