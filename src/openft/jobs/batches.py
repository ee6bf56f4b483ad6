"""Answering batches in the worker (the Batch API, services/batches.py), durable like training jobs.

A worker holds at most one batch at a time (`BatchRunner.turn`, once per turn of the worker loop): it claims
one (db/batches.py `claim_batch`: a lease and the fencing token `attempt`), and a thread of its own then
checks the input file (`validating`), answers the lines (`in_progress`) several at a time so they share the
engine's continuous batch, and writes the output and error files (`finalizing` → `completed`). The lease is
renewed while it works; each renewal also reads whether the batch was cancelled or has run out of its 24 h.

Each answered line is recorded (a `batch_lines` row, under the fencing check, unique per line) before it
counts, so a worker killed mid-batch loses no finished line: whoever claims the batch after its lease expired
answers only the lines with no record, and the output file is assembled from the records at the end, one line
per `custom_id`.

`jobs` may not import the inference engine: the lines are answered through `LineAnswerer`, which the service
layer provides (services/batches.py `BatchLineAnswerer`), built only when a batch is first claimed.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy.orm import Session, sessionmaker

from openft.db import batches as batch_repo
from openft.errors import RateLimited, ServiceUnavailable
from openft.storage import StoredBlob

log = logging.getLogger(__name__)
CANCEL_CHECK_SECONDS = 0.5
"""How often the lease is renewed while lines are answered; each renewal reads whether the batch was cancelled."""
BUSY_RETRY_SECONDS = 0.5
"""How long a line the engine had no room for waits before it is tried again (it is not a failed line)."""


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


@dataclass
class _Flags:
    lost: bool = False
    cancelling: bool = False
    expired: bool = False
    stopping: bool = False

    def halted(self) -> bool:
        return self.lost or self.cancelling or self.expired or self.stopping


@dataclass
class _Claim:
    batch_id: str
    attempt: int
    org_id: str
    endpoint: str
    input_file_id: str
    status: str
    expires_at: int
    flags: _Flags = field(default_factory=_Flags)


class BatchRunner:
    """One batch at a time per worker, in a thread of its own (`turn` claims; `stop` lets it hand back)."""

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
        self._sessions = sessions
        self._files = files
        self._make_answerer = answerer
        self._answerer: LineAnswerer | None = None
        self._worker_id = worker_id
        self._lease = lease_seconds
        self._concurrency = max(1, concurrency)
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def turn(self) -> None:
        """Claim a batch when this worker holds none (one per call of the worker loop)."""
        if self._stopping.is_set() or (self._thread is not None and self._thread.is_alive()):
            return
        with self._sessions.begin() as session:
            row = batch_repo.claim_batch(session, worker_id=self._worker_id, lease_seconds=self._lease)
            if row is None:
                return
            claim = _Claim(
                row.id, row.attempt, row.organization_id, row.endpoint, row.input_file_id, row.status, row.expires_at
            )
        log.info("claimed batch %s (attempt %d, %s)", claim.batch_id, claim.attempt, claim.status)
        self._thread = threading.Thread(target=self._run, args=(claim,), name=f"openft-{claim.batch_id}", daemon=True)
        self._thread.start()

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float) -> None:
        """Stop taking lines; the lines in flight are recorded and the lease handed back, so another worker
        goes on at once."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self, claim: _Claim) -> None:
        try:
            asyncio.run(self._work(claim))
        except Exception:
            log.exception(
                "batch %s failed in this worker; its lease runs out and another worker goes on", claim.batch_id
            )

    async def _db(self, fn: Callable[[Session], Any]) -> Any:
        def call() -> Any:
            with self._sessions.begin() as session:
                return fn(session)

        return await asyncio.to_thread(call)

    async def _work(self, claim: _Claim) -> None:
        if self._answerer is None:
            self._answerer = await asyncio.to_thread(self._make_answerer)
        answerer = self._answerer
        lines, errors = await asyncio.to_thread(self._read_input, claim)
        if claim.status == "validating":
            if not errors:
                errors = await asyncio.to_thread(self._model_problems, answerer, claim.org_id, lines)
            now = int(time.time())
            if errors:
                await self._db(
                    lambda s: batch_repo.set_fenced(
                        s,
                        claim.batch_id,
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
                    s, claim.batch_id, claim.attempt, status="in_progress", in_progress_at=now, total=len(lines)
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
            if flags.stopping and not (flags.cancelling or flags.expired):
                await self._db(lambda s: batch_repo.set_fenced(s, claim.batch_id, claim.attempt, lease_expires_at=None))
                return
            if flags.cancelling:
                claim.status = "cancelling"
            elif flags.expired:
                claim.status = "expired"
            else:
                now = int(time.time())
                if not await self._db(
                    lambda s: batch_repo.set_fenced(
                        s, claim.batch_id, claim.attempt, status="finalizing", finalizing_at=now
                    )
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
        done = await self._db(lambda s: batch_repo.answered_lines(s, claim.batch_id))
        pending = [line for line in lines if line.line not in done]
        flags = claim.flags
        self._check(claim, claim.status)  # a batch past its 24 h (or a worker stopping) takes no line
        gate = asyncio.Semaphore(self._concurrency)
        answered: asyncio.Queue[tuple[int, bool, dict[str, Any], asyncio.Future[bool]]] = asyncio.Queue()

        async def one(line: InputLine) -> None:
            async with gate:
                while not flags.halted():
                    try:
                        status, body = await answerer.answer(claim.org_id, claim.endpoint, dict(line.body))
                    except (RateLimited, ServiceUnavailable):
                        await asyncio.sleep(BUSY_RETRY_SECONDS)
                        continue
                    record = {
                        "id": f"batch_req_{uuid.uuid4().hex}",
                        "custom_id": line.custom_id,
                        "response": {"status_code": status, "request_id": f"req_{uuid.uuid4().hex}", "body": body},
                        "error": None,
                    }
                    recorded = asyncio.get_running_loop().create_future()
                    answered.put_nowait((line.line, status == 200, record, recorded))
                    if not await recorded:
                        flags.lost = True
                    return

        async def record_answered() -> None:
            """Group commit: the lines answered meanwhile are recorded together, in one fenced transaction,
            before any of them counts (one commit per line would hold the engine's slots on the database)."""
            while True:
                group = [await answered.get()]
                while not answered.empty():
                    group.append(answered.get_nowait())
                items = [(line, ok, record) for line, ok, record, _ in group]
                try:
                    held = await self._db(functools.partial(_record_all, claim=claim, items=items))
                except Exception as exc:
                    for *_, waiter in group:
                        waiter.set_exception(exc)
                    continue
                for *_, waiter in group:
                    waiter.set_result(held)

        async def keep_lease() -> None:
            while True:
                await asyncio.sleep(min(CANCEL_CHECK_SECONDS, max(0.05, self._lease / 3)))
                self._check(claim, await self._db(lambda s: _state(s, claim, self._lease)))

        keeper = asyncio.create_task(keep_lease())
        recorder = asyncio.create_task(record_answered())
        try:
            await asyncio.gather(*(one(line) for line in pending))
        finally:
            keeper.cancel()
            recorder.cancel()
        self._check(claim, await self._db(lambda s: _state(s, claim, self._lease)))

    def _check(self, claim: _Claim, state: str | None) -> None:
        flags = claim.flags
        if state is None:
            flags.lost = True
        elif state == "cancelling":
            flags.cancelling = True
        if time.time() >= claim.expires_at:
            flags.expired = True
        if self._stopping.is_set():
            flags.stopping = True

    def _finalize(self, claim: _Claim, lines: list[InputLine], final: str) -> None:
        """Write the output file (status 200 lines) and the error file (the others, and under `cancelled` or
        `expired` the lines never answered), in input order; then the batch's final status, fenced."""
        with self._sessions.begin() as session:
            records = [(r.line, r.ok, r.record) for r in batch_repo.line_records(session, claim.batch_id)]
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
                path = Path(folder) / f"{claim.batch_id}_{name}.jsonl"
                path.write_text("".join(json.dumps(r) + "\n" for r in records_), encoding="utf-8")
                blobs.append((name, self._files.put_result_file(path)))
        now = int(time.time())
        with self._sessions.begin() as session:
            if batch_repo.holds(session, claim.batch_id, claim.attempt):
                values: dict[str, Any] = {
                    "status": final,
                    f"{final}_at": now,
                    "worker_id": None,
                    "lease_expires_at": None,
                }
                for name, blob in blobs:
                    file_id = batch_repo.add_output_file(
                        session, blob, org_id=claim.org_id, filename=f"{claim.batch_id}_{name}.jsonl"
                    )
                    values["output_file_id" if name == "output" else "error_file_id"] = file_id
                batch_repo.set_fenced(session, claim.batch_id, claim.attempt, **values)
                return
        for _, blob in blobs:  # the claim was lost meanwhile: the new holder writes its own files
            self._files.discard(blob.key)


def _state(session: Session, claim: _Claim, lease_seconds: float) -> str | None:
    row = batch_repo.renew_lease(session, claim.batch_id, claim.attempt, lease_seconds)
    return None if row is None else row.status


def _record_all(session: Session, *, claim: _Claim, items: list[tuple[int, bool, dict[str, Any]]]) -> bool:
    return batch_repo.record_lines(session, claim.batch_id, claim.attempt, items)
