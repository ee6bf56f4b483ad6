"""`GenerationStream`: a generation running on a worker thread, read delta by delta from any thread.

The HTTP layer reads a stream from a thread pool: successive `next()` calls may run on different
threads, and a client that disconnects leaves the stream closed or simply dropped. So the generation
does not run inside `next()`: it runs on the base's own thread (see `registry`), which holds the
base's lease, runs the token loop and puts deltas on a queue.

The queue is unbounded on purpose: a slow reader then never keeps the base (and every other request
on it) waiting; it cannot grow past the request's own `n × max_tokens` deltas. `close()` (or dropping
the stream) sets a flag that the loop checks before every token, so the base is released within one
forward pass.
"""

from __future__ import annotations

import queue
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType

from openft.inference.decoding import Generation
from openft.inference.registry import Lease
from openft.inference.types import StreamDelta


@dataclass(frozen=True)
class _End:
    completion_tokens: int
    error: BaseException | None = None


class GenerationStream(Iterator[StreamDelta]):
    """Iterator of `StreamDelta`s; `prompt_tokens` is known at once, `completion_tokens` is final once
    the stream is exhausted. A failure during generation is raised by `next()` after the deltas produced
    before it. Use as a context manager, or call `close()`, to stop early."""

    def __init__(self, lease: Lease, generation: Generation):
        self.prompt_tokens = generation.prompt_tokens
        self._completion_tokens = 0
        self._queue: queue.SimpleQueue[tuple[StreamDelta, int] | _End] = queue.SimpleQueue()
        self._cancel = threading.Event()
        self._finished = False
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

    def __next__(self) -> StreamDelta:
        if self._finished:
            raise StopIteration
        item = self._queue.get()
        if isinstance(item, _End):
            self._finished = True
            self._completion_tokens = item.completion_tokens
            if item.error is not None:
                raise item.error
            raise StopIteration
        delta, self._completion_tokens = item
        return delta

    def close(self) -> None:
        """Stop generating and wait (one forward pass at most) until the base is released."""
        self._cancel.set()
        self._job.result()  # _produce never raises: its errors go on the queue
        self._finished = True

    def __enter__(self) -> GenerationStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def _produce(
    lease: Lease,
    generation: Generation,
    out: queue.SimpleQueue[tuple[StreamDelta, int] | _End],
    cancel: threading.Event,
) -> None:
    """The generation thread: deltas onto the queue, then the end marker, after the base is released."""
    try:
        try:
            for delta in generation.run(cancel):
                out.put((delta, generation.completion_tokens))
        finally:
            lease.release()
    except BaseException as exc:  # handed to the reader, who raises it from next()
        out.put(_End(generation.completion_tokens, exc))
    else:
        out.put(_End(generation.completion_tokens))
