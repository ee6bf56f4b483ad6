"""`GenerationStream`: a generation running on a worker thread, read delta by delta from any thread.

The HTTP layer reads a stream from a thread pool: successive `next()` calls may run on different
threads, and a client that disconnects leaves the stream closed or simply dropped. So the generation
does not run inside `next()`: it runs on the base's own thread (see `registry`), which holds the
base's lease, runs the token loop and puts deltas on a queue.

The queue is unbounded on purpose: a slow reader then never keeps the base (and every other request
on it) waiting; it cannot grow past the request's own `n × max_tokens` deltas. `close()` or `cancel()`
(or dropping the stream) sets a flag that the loop checks before every token, so the base is released
within one forward pass.

An event loop reads the same stream with `async for`: the generation thread wakes the loop when it puts
a delta, so a waiting reader holds no thread at all (a server thread pool is never filled by readers).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from types import TracebackType

from openft.inference.decoding import Generation
from openft.inference.registry import Lease
from openft.inference.types import StreamDelta


@dataclass(frozen=True)
class StreamEnd:
    """How a generation ended: tokens generated, whether it was asked to stop early, and its failure."""

    completion_tokens: int
    cancelled: bool = False
    error: BaseException | None = None


class _Deltas:
    """The queue from the generation thread to the reader, waking an event loop that reads asynchronously."""

    def __init__(self) -> None:
        self.items: queue.SimpleQueue[tuple[StreamDelta, int] | StreamEnd] = queue.SimpleQueue()
        self.wake: Callable[[], None] | None = None

    def put(self, item: tuple[StreamDelta, int] | StreamEnd) -> None:
        self.items.put(item)
        wake = self.wake
        if wake is not None:
            wake()


class GenerationStream(Iterator[StreamDelta]):
    """Iterator (and async iterator) of `StreamDelta`s; `prompt_tokens` is known at once,
    `completion_tokens` is final once the stream is exhausted. A failure during generation is raised by
    `next()` after the deltas produced before it. Use as a context manager, or call `close()` (or
    `cancel()`, which does not wait), to stop early. Read it from one thread or one event loop."""

    def __init__(self, lease: Lease, generation: Generation):
        self.prompt_tokens = generation.prompt_tokens
        self._completion_tokens = 0
        self._queue = _Deltas()
        self._cancel = threading.Event()
        self._finished = False
        self._ready: asyncio.Event | None = None
        try:
            self._job = lease.submit(_produce, lease, generation, self._queue, self._cancel)
        except BaseException:  # e.g. the interpreter is shutting down
            lease.release()
            raise
        # The thread holds no reference to this object, so a dropped stream is collected and cancels it.
        self._finalizer = weakref.finalize(self, self._cancel.set)

    @property
    def completion_tokens(self) -> int:
        """Tokens generated so far over all choices (final once the stream is exhausted)."""
        return self._completion_tokens

    def __iter__(self) -> GenerationStream:
        return self

    @property
    def finished(self) -> Future[StreamEnd]:
        """Done once generation has stopped (finished, failed or cancelled) and the base is released.

        A callback on it must not hold the stream: a dropped stream is what cancels an abandoned generation.
        """
        return self._job

    def __next__(self) -> StreamDelta:
        if self._finished:
            raise StopIteration
        delta = self._take(self._queue.items.get())
        if delta is None:
            raise StopIteration
        return delta

    def __aiter__(self) -> GenerationStream:
        return self

    async def __anext__(self) -> StreamDelta:
        """`next()` for an event loop: waits without holding a thread."""
        if self._finished:
            raise StopAsyncIteration
        if self._ready is None:
            loop, ready = asyncio.get_running_loop(), asyncio.Event()
            self._ready = ready  # the wake-up holds the event and the loop, never the stream (see __init__)
            self._queue.wake = lambda: _call_soon(loop, ready.set)
        while True:
            self._ready.clear()
            try:
                item = self._queue.items.get_nowait()
            except queue.Empty:
                await self._ready.wait()  # set by the generation thread's next put
                continue
            delta = self._take(item)
            if delta is None:
                raise StopAsyncIteration
            return delta

    def _take(self, item: tuple[StreamDelta, int] | StreamEnd) -> StreamDelta | None:
        """The delta of a queue item; None at the end (raising the generation's error, if any)."""
        if isinstance(item, StreamEnd):
            self._finished = True
            self._completion_tokens = item.completion_tokens
            if item.error is not None:
                raise item.error
            return None
        delta, self._completion_tokens = item
        return delta

    def cancel(self) -> None:
        """Ask the generation to stop before its next token, without waiting (see `finished`); a no-op once
        the reader has seen its end."""
        if not self._finished:
            self._cancel.set()

    def close(self) -> None:
        """Stop generating and wait (one forward pass at most) until the base is released."""
        self.cancel()
        self._job.result()  # _produce never raises: its errors go on the queue
        self._finished = True

    def __enter__(self) -> GenerationStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], object]) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is reading any more
        loop.call_soon_threadsafe(callback)


def _produce(lease: Lease, generation: Generation, out: _Deltas, cancel: threading.Event) -> StreamEnd:
    """The generation thread: deltas onto the queue, then the end marker, after the base is released."""
    try:
        try:
            for delta in generation.run(cancel):
                out.put((delta, generation.completion_tokens))
        finally:
            lease.release()
    except BaseException as exc:  # handed to the reader, who raises it from next()
        end = StreamEnd(generation.completion_tokens, cancel.is_set(), exc)
    else:
        end = StreamEnd(generation.completion_tokens, cancel.is_set())
    out.put(end)
    return end
