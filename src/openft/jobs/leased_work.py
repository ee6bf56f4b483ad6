"""Leased work in the worker: a batch (jobs/batches.py) or an eval run (jobs/eval_runs.py), claimed and done
under a lease, durable like a training job. Both are done the same way, so the machinery lives here once.

A worker holds at most one claim of a kind at a time (`LeasedRunner.turn`, once per turn of the worker loop):
the kind's `_claim` takes one (db/leases.py `claim`: a lease and the fencing token `attempt`), and a thread of
its own then does the work (the kind's `_work`). The pieces of the work (a batch's lines, a run's items) go
through `_work_through`: several at a time, so that their requests share the engine's continuous batch, each
finished piece recorded under the fencing check before it counts (group commits: one per piece would hold the
engine's slots on the database), and the lease renewed meanwhile. Each renewal also reads whether the work
was cancelled; what the claim has learnt is in its `Flags`.

Whoever claims the work after a worker was killed (its lease ran out) or stopped (it handed the lease back)
does only the pieces with no record. A worker that lost its claim (another took over, the row was deleted)
writes nothing more: every write of the kind's repository is fenced by `attempt`.

`jobs` may not import the inference engine: the work is done through a tool the service layer provides
(services/work_answerer.py), built only when the worker first claims work of the kind (`_tool`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from sqlalchemy.orm import Session, sessionmaker

from openft.errors import RateLimited, ServiceUnavailable

log = logging.getLogger(__name__)
CANCEL_CHECK_SECONDS = 0.5
"""How often the lease is renewed while pieces are done; each renewal reads whether the work was cancelled."""
BUSY_RETRY_SECONDS = 0.5
"""How long a request the engine had no room for waits before it is tried again (it is not a failed piece)."""

T = TypeVar("T")
Piece = TypeVar("Piece")
Record = TypeVar("Record")


@dataclass
class Flags:
    """What a claim has learnt while its work was done; any of them halts it (no new piece is started)."""

    lost: bool = False
    """Another worker holds the claim now, or the row is gone: nothing more may be written."""
    cancelled: bool = False
    """The user cancelled the work (the kind's `cancel_status`)."""
    expired: bool = False
    """The work ran past its deadline (`Claim.deadline`)."""
    stopping: bool = False
    """This worker stops: it hands the claim back for another to go on."""

    def halted(self) -> bool:
        return self.lost or self.cancelled or self.expired or self.stopping


@dataclass(kw_only=True)
class Claim:
    """A claim as the worker holds it: the row's id, the fencing token, the status it was claimed in; each kind
    adds what its work needs (read in the claiming transaction)."""

    id: str
    attempt: int
    status: str
    deadline: float | None = None
    """When the work expires (a batch's 24 h window); None: never."""
    flags: Flags = field(default_factory=Flags)


ClaimT = TypeVar("ClaimT", bound=Claim)


async def when_room(flags: Flags, ask: Callable[[], Awaitable[T]]) -> T | None:
    """`ask` the engine until it has room (RateLimited or ServiceUnavailable now is waited out: the piece is
    not failed for it); None when the claim halted meanwhile."""
    while not flags.halted():
        try:
            return await ask()
        except (RateLimited, ServiceUnavailable):
            await asyncio.sleep(BUSY_RETRY_SECONDS)
    return None


class LeasedRunner(ABC, Generic[ClaimT, T]):
    """One claim of a kind at a time per worker, in a thread of its own (`turn` claims; `stop` lets it hand
    back). `T` is the tool the work is done with, built by `make_tool` on the first claim."""

    kind: ClassVar[str]
    """What is claimed, for the logs ("batch", "eval run")."""
    cancel_status: ClassVar[str]
    """The status the API sets when the user cancels: a renewal that reads it halts the work."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        make_tool: Callable[[], T],
        *,
        worker_id: str,
        lease_seconds: float,
        concurrency: int,
    ):
        self._sessions = sessions
        self._make_tool = make_tool
        self._tool_built: T | None = None
        self._worker_id = worker_id
        self._lease = lease_seconds
        self._concurrency = max(1, concurrency)
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # the kind's parts ------------------------------------------------------------------------------------
    @abstractmethod
    def _claim(self) -> ClaimT | None:
        """Claim work of this kind in a transaction of its own (None: there is none)."""

    @abstractmethod
    async def _work(self, claim: ClaimT) -> None:
        """Do the claimed work, in the claim's thread; every write fenced by `claim.attempt`."""

    @abstractmethod
    def _renew(self, session: Session, claim: ClaimT) -> str | None:
        """Extend the claim's lease; the row's status now, or None when the claim is lost."""

    # the thread --------------------------------------------------------------------------------------------
    def turn(self) -> None:
        """Claim work when this worker holds none (one per call of the worker loop)."""
        if self._stopping.is_set() or self.running():
            return
        claim = self._claim()
        if claim is None:
            return
        log.info("claimed %s %s (attempt %d, %s)", self.kind, claim.id, claim.attempt, claim.status)
        self._thread = threading.Thread(target=self._run, args=(claim,), name=f"openft-{claim.id}", daemon=True)
        self._thread.start()

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float) -> None:
        """Stop taking pieces; the pieces in flight are recorded and the lease handed back, so another worker
        goes on at once."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self, claim: ClaimT) -> None:
        try:
            asyncio.run(self._work(claim))
        except Exception:
            log.exception(
                "%s %s failed in this worker; its lease runs out and another worker goes on", self.kind, claim.id
            )

    # helpers for the kind's `_work` ------------------------------------------------------------------------
    async def _db(self, fn: Callable[[Session], Any]) -> Any:
        """`fn` in a transaction of its own, off the event loop (the pieces in flight go on meanwhile)."""

        def call() -> Any:
            with self._sessions.begin() as session:
                return fn(session)

        return await asyncio.to_thread(call)

    async def _tool(self) -> T:
        """The tool the work is done with, built on the first claim (it may load the inference engine, so in
        a thread) and kept for the next."""
        if self._tool_built is None:
            self._tool_built = await asyncio.to_thread(self._make_tool)
        return self._tool_built

    def _check(self, claim: ClaimT, status: str | None) -> None:
        """Note in the claim's flags what the row's `status` (None: the claim is lost), the clock and this
        worker say."""
        flags = claim.flags
        if status is None:
            flags.lost = True
        elif status == self.cancel_status:
            flags.cancelled = True
        if claim.deadline is not None and time.time() >= claim.deadline:
            flags.expired = True
        if self._stopping.is_set():
            flags.stopping = True

    async def _renew_and_check(self, claim: ClaimT) -> None:
        self._check(claim, await self._db(lambda s: self._renew(s, claim)))

    async def _work_through(
        self,
        claim: ClaimT,
        pending: Sequence[Piece],
        do: Callable[[Piece], Awaitable[Record | None]],
        record: Callable[[Session, list[Record]], bool],
    ) -> None:
        """Do the `pending` pieces, `concurrency` at once, while the claim is not halted: `do` one (None: it
        was halted meanwhile, nothing to record), then `record` what it produced, fenced (False: the claim is
        lost). Returns when every piece was done or halted, the lease renewed a last time; `claim.flags` say
        which."""
        flags = claim.flags
        self._check(claim, claim.status)  # work past its deadline (or a worker stopping) takes no piece
        gate = asyncio.Semaphore(self._concurrency)
        done: asyncio.Queue[tuple[Record, asyncio.Future[bool]]] = asyncio.Queue()

        async def one(piece: Piece) -> None:
            async with gate:
                if flags.halted():
                    return
                result = await do(piece)
                if result is None or flags.lost:
                    return
                recorded = asyncio.get_running_loop().create_future()
                done.put_nowait((result, recorded))
                if not await recorded:
                    flags.lost = True

        async def record_group(results: list[Record]) -> bool:
            return bool(await self._db(lambda s: record(s, results)))

        async def record_done() -> None:
            """Group commit: the pieces done meanwhile are recorded together, in one fenced transaction, before
            any of them counts."""
            while True:
                group = [await done.get()]
                while not done.empty():
                    group.append(done.get_nowait())
                try:
                    held = await record_group([result for result, _ in group])
                except Exception as exc:
                    for _, waiter in group:
                        waiter.set_exception(exc)
                    continue
                for _, waiter in group:
                    waiter.set_result(held)

        async def keep_lease() -> None:
            while True:
                await asyncio.sleep(min(CANCEL_CHECK_SECONDS, max(0.05, self._lease / 3)))
                await self._renew_and_check(claim)

        keeper = asyncio.create_task(keep_lease())
        recorder = asyncio.create_task(record_done())
        try:
            await asyncio.gather(*(one(piece) for piece in pending))
        finally:
            keeper.cancel()
            recorder.cancel()
        await self._renew_and_check(claim)
