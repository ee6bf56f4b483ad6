"""Continuous batching: one scheduler, on one thread, per loaded model.

Every request on a model (its base, any LoRA adapter on it, or no adapter) joins that model's running
batch at the next step: its prompt is run once (prefill), its KV cache is merged into the batch's, and from
then on one forward pass decodes one token for every row of every request. A request leaves the batch as
soon as it is done or its reader has gone; the others go on. Each request keeps its own sampling state
(`RequestDecoder`): seeds, penalties, stop strings, logprobs, JSON and tool constraints do not depend on
what it is batched with.

The batch's KV cache is a rectangle: rows of different lengths are left-padded to the longest, with an
attention mask that hides the padding and explicit position ids, so a row computes what it would alone
(up to floating-point summation order: greedy output in a batch equals the output alone). Joining pads
either the newcomer or the batch; leaving drops rows and the leading columns no row needs any more.

Memory is bounded, never exceeded: a request is admitted only when the rectangle, grown to where it
would be if every row ran to its `max_tokens`, fits `kv_limit_bytes`; otherwise it waits (requests are
never preempted, because the reservation is the worst case). A request that could not fit even alone is
refused when it is submitted. Waiting requests are admitted round-robin over organizations, so one
organization's burst cannot starve another's.

All torch work of the model runs on this thread (the registry loads models and adapters through `call`,
between steps): with libgomp each thread that runs torch ops gets its own OpenMP team, and more teams than
cores slow every op (see `openft.inference.registry`).

Models whose cache has sliding-window layers (which keep only the last tokens) cannot have rows merged
into a rectangle: their requests run one at a time (`can_merge` False).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from openft.inference.decoding import RequestDecoder
from openft.inference.stream import StreamChannel
from openft.inference.types import StreamDelta

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH_ROWS = 64
"""Rows (requests × n) decoded together at most; the KV budget usually binds first."""


@dataclass(eq=False)
class BatchRequest:
    """One request handed to a scheduler: its decoder, its stream's producer half and who sent it."""

    decoder: RequestDecoder
    channel: StreamChannel
    adapter: int | None = None
    """The LoRA adapter of its rows (an id of the model's `LoraBank`); None: the bare model."""
    org: Hashable = None
    """Requests are admitted round-robin over this key (the caller's organization)."""
    on_done: Callable[[], None] | None = None
    """Called once, on the scheduler's thread, after the request left (gives back its model and adapter)."""
    submitted: float = field(default_factory=time.monotonic)


@dataclass(eq=False)
class _Running:
    request: BatchRequest
    rows: int


class KvBudgetExceeded(Exception):
    """A request whose KV cache could not fit the budget even alone."""


def kv_bytes_per_token(config: Any, dtype: torch.dtype) -> int:
    """Bytes one token of one row takes in the KV cache: keys and values of every layer."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = int(getattr(text, "num_hidden_layers", 1))
    heads = int(getattr(text, "num_attention_heads", 1))
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    head_dim = getattr(text, "head_dim", None) or int(getattr(text, "hidden_size", heads)) // heads
    return 2 * layers * kv_heads * int(head_dim) * torch.finfo(dtype).bits // 8


class BatchScheduler:
    """Runs every request of one model in one continuously changing batch (see the module docstring)."""

    def __init__(
        self,
        name: str,
        *,
        kv_limit_bytes: int,
        max_rows: int = DEFAULT_MAX_BATCH_ROWS,
        on_step: Callable[[int], None] | None = None,
    ):
        """`on_step(rows)` is called after every forward pass (prefill: the request's rows; decode: the
        batch's), on this thread: for operators' metrics; it must be quick and must not raise."""
        if max_rows < 1:
            raise ValueError("max_rows must be at least 1")
        self._name = name
        self.kv_limit_bytes = kv_limit_bytes
        self._max_rows = max_rows
        self._on_step = on_step
        self._cond = threading.Condition()
        self._calls: deque[tuple[Callable[..., Any], tuple[Any, ...], Future[Any]]] = deque()
        self._waiting: OrderedDict[Hashable, deque[BatchRequest]] = OrderedDict()  # org → its line, in turn order
        self._waiting_count = 0
        self._stopping = False
        # The model, set on this thread by the registry once loaded.
        self.model: Any = None
        self.bank: Any = None
        self.kv_bytes_per_token = 0
        self.can_merge = True
        # The batch: requests in row order, their KV cache, mask (1 real, 0 padding) and next positions.
        self._running: list[_Running] = []
        self._cache: DynamicCache | None = None
        self._mask = torch.zeros((0, 0), dtype=torch.long)
        self._positions = torch.zeros(0, dtype=torch.long)
        self._row_adapters: list[int | None] = []
        self._device = torch.device("cpu")
        # What operators watch (read without the lock: plain ints).
        self.steps_total = 0
        self.rows_total = 0
        self.tokens_total = 0
        self.requests_done = 0
        self._thread = threading.Thread(target=self._loop, name=f"openft-{name}", daemon=True)
        self._thread.start()

    # Any thread ------------------------------------------------------------------------------------
    def call(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """Run `fn(*args)` on this scheduler's thread between two steps."""
        future: Future[Any] = Future()
        with self._cond:
            if self._stopping:
                future.set_exception(RuntimeError("the model was unloaded"))
                return future
            self._calls.append((fn, args, future))
            self._cond.notify()
        return future

    def attach(self, model: Any, bank: Any) -> None:
        """On this thread, once the model is loaded: what the steps run."""
        self.model, self.bank = model, bank
        parameter = next(model.parameters(), None)
        self._device = parameter.device if parameter is not None else torch.device("cpu")
        dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
        self.kv_bytes_per_token = kv_bytes_per_token(model.config, dtype)
        layers = DynamicCache(config=model.config).layers
        self.can_merge = all(type(layer) is DynamicLayer for layer in layers)

    def check_fits(self, decoder: RequestDecoder) -> None:
        """Raise KvBudgetExceeded when the request's cache could not fit the budget even alone."""
        need = decoder.rows * (len(decoder.prompt_ids) + decoder.max_new_tokens) * self.kv_bytes_per_token
        if need > self.kv_limit_bytes:
            raise KvBudgetExceeded(
                f"The request needs {need / 2**20:.0f} MiB of KV cache, more than this server's "
                f"{self.kv_limit_bytes / 2**20:.0f} MiB for one model (OPENFT_KV_CACHE_GB); lower max_tokens or n."
            )

    def submit(self, request: BatchRequest) -> None:
        """Queue a request; it joins the batch at the next step its turn comes and it fits."""
        request.channel.on_cancel(self._wake)
        with self._cond:
            if self._stopping:
                raise RuntimeError("the model was unloaded")
            self._waiting.setdefault(request.org, deque()).append(request)
            self._waiting_count += 1
            self._cond.notify()

    def waiting(self) -> int:
        """Requests not yet admitted into the batch."""
        return self._waiting_count

    def stats(self) -> dict[str, int]:
        rows = len(self._row_adapters)
        width = self._mask.shape[1] if rows else 0
        return {
            "requests_waiting": self._waiting_count,
            "requests_running": len(self._running),
            "rows_running": rows,
            "batch_steps_total": self.steps_total,
            "batch_rows_total": self.rows_total,
            "tokens_generated_total": self.tokens_total,
            "kv_cache_bytes_used": rows * width * self.kv_bytes_per_token,
            "kv_cache_bytes_limit": self.kv_limit_bytes,
        }

    def stop(self) -> None:
        """Stop the thread after the current step; waiting and running requests end (cancelled)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=60)

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify()

    # The scheduler's thread --------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._stopping or self._calls or self._waiting_count or self._running):
                    self._cond.wait()
                calls, self._calls = self._calls, deque()
                stopping = self._stopping
            for fn, args, future in calls:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn(*args))
                    except BaseException as exc:
                        future.set_exception(exc)
            if stopping:
                self._shut_down()
                return
            try:
                self._leave_cancelled()
                self._admit()
                if self._running:
                    self._step()
            except Exception as exc:  # a failed forward pass: its requests end with the error, the thread lives on
                log.exception("%s: batch step failed", self._name)
                self._fail_batch(exc)

    def _shut_down(self) -> None:
        for running in self._running:
            self._finish(running.request, RuntimeError("the model was unloaded"))
        self._reset_batch()
        with self._cond:
            lines, self._waiting, self._waiting_count = self._waiting, OrderedDict(), 0
            calls, self._calls = self._calls, deque()
        for line in lines.values():
            for request in line:
                self._finish(request, RuntimeError("the model was unloaded"))
        for _, _, future in calls:
            future.set_exception(RuntimeError("the model was unloaded"))

    def _next_waiting(self) -> BatchRequest | None:
        """The request whose turn it is (round-robin over organizations), without taking it."""
        with self._cond:
            return next(iter(self._waiting.values()))[0] if self._waiting else None

    def _take_waiting(self, request: BatchRequest) -> None:
        """Take `request` (the head of its organization's line) and send that organization to the back."""
        with self._cond:
            line = self._waiting[request.org]
            line.popleft()
            self._waiting_count -= 1
            del self._waiting[request.org]
            if line:
                self._waiting[request.org] = line

    def _admit(self) -> None:
        """Prefill waiting requests, in turn, while they fit; the first that does not fit waits for room."""
        while (request := self._next_waiting()) is not None:
            if self._running and not (self.can_merge and self._fits(request)):
                return
            self._take_waiting(request)
            self._prefill(request)

    def _fits(self, request: BatchRequest) -> bool:
        """Would the batch, with this request, stay within the rows and KV bounds if every row ran to its end?"""
        decoder = request.decoder
        rows = len(self._row_adapters) + decoder.rows
        if rows > self._max_rows:
            return False
        width = max(self._mask.shape[1], len(decoder.prompt_ids))
        longest = max([decoder.max_new_tokens] + [r.request.decoder.steps_left for r in self._running])
        return rows * (width + longest) * self.kv_bytes_per_token <= self.kv_limit_bytes

    @torch.inference_mode()
    def _prefill(self, request: BatchRequest) -> None:
        decoder, channel = request.decoder, request.channel
        try:
            channel.admit()
            for delta in decoder.opening():
                channel.put(delta, decoder.completion_tokens)
            if decoder.done:  # no room for a single token
                self._put(request, decoder.finish_now())
                self._finish(request, None)
                return
            cache = DynamicCache(config=self.model.config)
            input_ids = torch.tensor([decoder.prompt_ids], dtype=torch.long, device=self._device)
            with self.bank.rows([request.adapter]):
                logits = self.model(input_ids=input_ids, cache=cache, use_cache=True, logits_to_keep=1).logits
            self._observe(1)
            self._put(request, decoder.advance(logits[:, -1, :]))
        except Exception as exc:
            log.exception("%s: prefill failed", self._name)
            self._finish(request, exc)
            return
        if decoder.done:
            self._finish(request, None)
            return
        if decoder.rows > 1:
            cache.batch_repeat_interleave(decoder.rows)
        self._join(request, cache, len(decoder.prompt_ids))

    def _join(self, request: BatchRequest, cache: DynamicCache, length: int) -> None:
        """Merge a prefilled request's cache (its rows, `length` columns) into the batch's rectangle."""
        rows = request.decoder.rows
        new_mask = torch.ones((rows, length), dtype=torch.long)
        if self._cache is None:
            self._cache, self._mask = cache, new_mask
        else:
            width = self._mask.shape[1]
            if length < width:
                _pad_layers(cache, width - length)
                new_mask = torch.cat([torch.zeros((rows, width - length), dtype=torch.long), new_mask], dim=1)
            elif length > width:
                _pad_layers(self._cache, length - width)
                self._mask = torch.cat(
                    [torch.zeros((self._mask.shape[0], length - width), dtype=torch.long), self._mask], dim=1
                )
            for mine, theirs in zip(_layers(self._cache), _layers(cache), strict=True):
                (keys, values), (new_keys, new_values) = _kv(mine), _kv(theirs)
                mine.keys = torch.cat([keys, new_keys], dim=0)
                mine.values = torch.cat([values, new_values], dim=0)
            self._mask = torch.cat([self._mask, new_mask], dim=0)
        self._positions = torch.cat([self._positions, torch.full((rows,), length, dtype=torch.long)])
        self._row_adapters += [request.adapter] * rows
        self._running.append(_Running(request, rows))

    @torch.inference_mode()
    def _step(self) -> None:
        """One forward pass: one token for every row of the batch."""
        next_ids = [token for running in self._running for token in running.request.decoder.next_ids]
        rows = len(next_ids)
        input_ids = torch.tensor(next_ids, dtype=torch.long, device=self._device)[:, None]
        mask = torch.cat([self._mask, torch.ones((rows, 1), dtype=torch.long)], dim=1)
        with self.bank.rows(self._row_adapters):
            logits = self.model(
                input_ids=input_ids,
                attention_mask=mask.to(self._device),
                position_ids=self._positions[:, None].to(self._device),
                cache=self._cache,
                use_cache=True,
                logits_to_keep=1,
            ).logits[:, -1, :]
        self._mask, self._positions = mask, self._positions + 1
        self.steps_total += 1
        self.rows_total += rows
        self._observe(rows)
        start = 0
        for running in self._running:
            decoder = running.request.decoder
            before = decoder.completion_tokens
            self._put(running.request, decoder.advance(logits[start : start + running.rows]))
            self.tokens_total += decoder.completion_tokens - before
            start += running.rows
        self._leave([r for r in self._running if r.request.decoder.done])

    def _leave_cancelled(self) -> None:
        """Requests whose readers left: out of the batch, and out of the line at once (not at their turn)."""
        self._leave([r for r in self._running if r.request.channel.cancelled])
        gone: list[BatchRequest] = []
        with self._cond:
            for org in list(self._waiting):
                line = self._waiting[org]
                if any(request.channel.cancelled for request in line):
                    gone += [request for request in line if request.channel.cancelled]
                    line = deque(request for request in line if not request.channel.cancelled)
                    self._waiting_count -= len(self._waiting[org]) - len(line)
                    if line:
                        self._waiting[org] = line
                    else:
                        del self._waiting[org]
        for request in gone:
            self._finish(request, None)

    def _leave(self, leaving: list[_Running]) -> None:
        """Drop finished or cancelled requests' rows, and the leading columns nobody needs any more."""
        if not leaving:
            return
        keep: list[int] = []
        start = 0
        staying = []
        for running in self._running:
            if running not in leaving:
                keep += range(start, start + running.rows)
                staying.append(running)
            start += running.rows
        self._running = staying
        if not keep:
            self._reset_batch()
        else:
            index = torch.tensor(keep, dtype=torch.long)
            self._mask, self._positions = self._mask[index], self._positions[index]
            self._row_adapters = [self._row_adapters[i] for i in keep]
            first = int(self._mask.any(dim=0).nonzero()[0])  # columns before it are padding in every row
            self._mask = self._mask[:, first:]
            device_index = index.to(self._device)
            assert self._cache is not None
            for layer in _layers(self._cache):
                keys, values = _kv(layer)
                layer.keys, layer.values = keys[device_index, :, first:], values[device_index, :, first:]
        for running in leaving:
            self._finish(running.request, None)

    def _reset_batch(self) -> None:
        self._running, self._cache, self._row_adapters = [], None, []
        self._mask = torch.zeros((0, 0), dtype=torch.long)
        self._positions = torch.zeros(0, dtype=torch.long)

    def _fail_batch(self, exc: Exception) -> None:
        running, self._running = self._running, []
        self._reset_batch()
        for entry in running:
            self._finish(entry.request, exc)

    def _observe(self, rows: int) -> None:
        if self._on_step is not None:
            try:
                self._on_step(rows)
            except Exception:  # metrics never break serving
                log.exception("%s: the step observer failed", self._name)

    @staticmethod
    def _put(request: BatchRequest, deltas: list[StreamDelta]) -> None:
        for delta in deltas:
            request.channel.put(delta, request.decoder.completion_tokens)

    def _finish(self, request: BatchRequest, error: BaseException | None) -> None:
        """The request is out of the batch: give back what it held, then end its stream."""
        self.requests_done += 1
        try:
            if request.on_done is not None:
                request.on_done()
        finally:
            request.channel.end(request.decoder.completion_tokens, error)


def _layers(cache: DynamicCache) -> list[DynamicLayer]:
    """The cache's layers, each a plain `DynamicLayer` with `keys` and `values` (`BatchScheduler.can_merge`)."""
    layers = []
    for layer in cache.layers:
        assert isinstance(layer, DynamicLayer)
        layers.append(layer)
    return layers


def _kv(layer: DynamicLayer) -> tuple[torch.Tensor, torch.Tensor]:
    assert layer.keys is not None and layer.values is not None
    return layer.keys, layer.values


def _pad_layers(cache: DynamicCache, columns: int) -> None:
    """Left-pad every layer of `cache` with `columns` zero positions (hidden by the attention mask)."""
    for layer in _layers(cache):
        keys, values = _kv(layer)
        layer.keys = torch.cat([keys.new_zeros((*keys.shape[:2], columns, keys.shape[3])), keys], dim=2)
        layer.values = torch.cat([values.new_zeros((*values.shape[:2], columns, values.shape[3])), values], dim=2)
