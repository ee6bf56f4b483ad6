"""Operators' metrics in the Prometheus text format (`GET /metrics`; README "Metrics", docs/design.md §9).

Two kinds of numbers:

- events the serving path reports as they happen (`ServingMetrics`): requests by outcome, tokens, time to the
  first token, time between tokens, time waiting for admission, rows per forward step. These are counters and
  histograms kept in memory, updated with a few uncontended lock operations per call, cheap enough per token;
- state read when Prometheus scrapes (`StateCollector`): what the inference engine holds (its `stats()` dict:
  loaded models, adapters, memory, queue depth, batch rows, KV cache) and how many fine-tuning jobs are in each
  status (one GROUP BY on the job table). Nothing polls in between, so an idle server does no work for metrics.

Every `Metrics` has its own `CollectorRegistry`, never prometheus_client's global one: tests build many apps in
one process, and two servers in one process must not add up each other's counts.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from sqlalchemy.orm import Session, sessionmaker

from openft.db import repositories as repo
from openft.db.engine import read_only_sessions
from openft.domain.job_states import JobStatus

log = logging.getLogger(__name__)

ENDPOINTS = ("chat", "completions")
"""`endpoint` label values: `/chat/completions` and the legacy `/completions`."""
OUTCOMES = ("ok", "error", "rejected", "timeout", "cancelled")
"""`outcome` label values of `openft_requests_total`:

- `ok`: the answer was sent in full (also when generation stopped at `max_tokens`);
- `error`: the request failed after admission (a model that would not load, a bad prompt found late, a crash);
- `rejected`: refused before any generation (429 for a full line, 503);
- `timeout`: the server gave up on it (a deadline);
- `cancelled`: the client went away (a closed stream) before the end."""
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Seconds, 1 ms to 60 s, about ×2.5 apart: a GPU's inter-token gaps (a few ms) and a CPU's (tens to hundreds of
ms), a first token that waited for a model load (seconds) and a long line before admission (up to a minute) all
land in a bucket of their own rather than in +Inf."""
BATCH_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0)
"""Rows per forward step: powers of two, as batch sizes are usually configured."""


class ServingMetrics:
    """What the inference path reports as it serves (services/inference.py calls these).

    Every method only adds to in-memory counters (no I/O, no allocation of new label sets: the children for
    every `endpoint` × `outcome` are made up front), so calling `inter_token` once per generated token is fine.
    An unknown `endpoint` or `outcome` is a bug in the caller and raises `ValueError`.
    """

    def __init__(self, registry: CollectorRegistry):
        requests = Counter(
            "openft_requests",
            "Chat and completion requests that ended, by endpoint and outcome (see services/metrics.OUTCOMES).",
            ["endpoint", "outcome"],
            registry=registry,
        )
        output_tokens = Counter(
            "openft_output_tokens",
            "Tokens generated for ended requests (all choices); rate() of it is the tokens per second served.",
            ["endpoint"],
            registry=registry,
        )
        prompt_tokens = Counter(
            "openft_prompt_tokens", "Prompt tokens of ended requests.", ["endpoint"], registry=registry
        )
        first_token = Histogram(
            "openft_time_to_first_token_seconds",
            "From the request's arrival to its first generated token (queue and model load included).",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._inter_token = Histogram(
            "openft_inter_token_latency_seconds",
            "Time between two consecutive tokens of one sequence.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._queue = Histogram(
            "openft_request_queue_seconds",
            "Time a request waited before it was admitted to generation.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._batch = Histogram(
            "openft_batch_size", "Rows (sequences) in one forward step.", buckets=BATCH_BUCKETS, registry=registry
        )
        self._requests = {(e, o): requests.labels(endpoint=e, outcome=o) for e in ENDPOINTS for o in OUTCOMES}
        self._output_tokens = {e: output_tokens.labels(endpoint=e) for e in ENDPOINTS}
        self._prompt_tokens = {e: prompt_tokens.labels(endpoint=e) for e in ENDPOINTS}
        self._first_token = {e: first_token.labels(endpoint=e) for e in ENDPOINTS}

    def request_finished(self, endpoint: str, outcome: str, prompt_tokens: int, completion_tokens: int) -> None:
        """Count one ended request (once per generation, whatever happened to it: a legacy completion with several
        prompts counts one per prompt) and its tokens.

        `endpoint` is `chat` or `completions`; `outcome` one of `OUTCOMES`. `prompt_tokens` and
        `completion_tokens` are the usage the request was (or would have been) billed: 0 for a rejected one,
        what was generated so far for a cancelled or failed one. Negative counts raise `ValueError`.
        """
        try:
            counter = self._requests[(endpoint, outcome)]
        except KeyError:
            raise ValueError(f"unknown endpoint/outcome {endpoint!r}/{outcome!r}") from None
        counter.inc()
        if prompt_tokens:
            self._prompt_tokens[endpoint].inc(prompt_tokens)
        if completion_tokens:
            self._output_tokens[endpoint].inc(completion_tokens)

    def first_token(self, endpoint: str, seconds: float) -> None:
        """The first token of a request was ready `seconds` after the request arrived (once per request; for
        `n` > 1 the first token of any choice)."""
        try:
            child = self._first_token[endpoint]
        except KeyError:
            raise ValueError(f"unknown endpoint {endpoint!r}") from None
        child.observe(seconds)

    def inter_token(self, seconds: float) -> None:
        """One sequence produced its next token `seconds` after its previous one (per token after the first)."""
        self._inter_token.observe(seconds)

    def queued(self, seconds: float) -> None:
        """A request was admitted after waiting `seconds` in the admission line (0 when it went straight in);
        once per admitted request."""
        self._queue.observe(seconds)

    def batch(self, rows: int) -> None:
        """One forward step ran with `rows` sequences in its batch (once per step, prefill and decode alike)."""
        self._batch.observe(rows)


ENGINE_GAUGES: dict[str, tuple[str, str]] = {
    "bases_loaded": ("openft_inference_bases_loaded", "Base models loaded for inference."),
    "full_models_loaded": ("openft_inference_full_models_loaded", "Full fine-tuned models loaded for inference."),
    "adapters_loaded": ("openft_inference_adapters_loaded", "LoRA adapters kept in memory."),
    "adapter_bytes": ("openft_inference_adapter_bytes", "Bytes of the loaded adapters' weights."),
    "model_bytes": ("openft_inference_model_bytes", "Bytes of the loaded models' weights."),
    "memory_bytes": ("openft_inference_memory_bytes", "Bytes the inference memory budget counts (models+adapters)."),
    "requests_waiting": ("openft_inference_requests_waiting", "Requests waiting for admission (queue depth)."),
    "requests_running": ("openft_inference_requests_running", "Requests being generated now."),
    "rows_running": ("openft_inference_rows_running", "Sequences in the running batch (its size)."),
    "kv_cache_bytes_used": ("openft_inference_kv_cache_bytes_used", "Bytes of KV cache in use."),
    "kv_cache_bytes_limit": ("openft_inference_kv_cache_bytes_limit", "Bytes the KV cache may use."),
}
"""Keys of the engine's `stats()` exported as gauges; a key the engine does not report is left out."""
ENGINE_COUNTERS: dict[str, tuple[str, str]] = {
    "models_evicted": ("openft_inference_models_evicted", "Models unloaded to stay within the memory budget."),
    "batch_steps_total": ("openft_inference_batch_steps", "Forward steps the engine ran."),
    "batch_rows_total": ("openft_inference_batch_rows", "Rows over all forward steps (÷ steps: mean batch size)."),
    "tokens_generated_total": ("openft_inference_tokens_generated", "Tokens the engine generated."),
}
"""Keys of the engine's `stats()` that only grow, exported as counters (`_total` is added to the name)."""

EngineStats = Callable[[], Mapping[str, float]]
JobCounts = Callable[[], Mapping[str, int]]


class StateCollector:
    """Reads the engine's and the job table's state when Prometheus scrapes.

    A source that fails (the database down, an engine bug) must not cost the whole scrape, which would hide
    every other number just when they matter: it is logged, its families are left out and
    `openft_metrics_source_up{source=...}` says 0.
    """

    def __init__(self, engine_stats: EngineStats | None, job_counts: JobCounts | None):
        self._engine_stats = engine_stats
        self._job_counts = job_counts

    def describe(self) -> Iterable[Metric]:
        """Nothing: registering must not read the database (the registry calls `describe` at `register`)."""
        return []

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(
            "openft_metrics_source_up", "1 if the source was read for this scrape, 0 if it failed.", labels=["source"]
        )
        families: list[Metric] = []
        if self._engine_stats is not None:
            families += self._read("engine", up, self._engine_families)
        if self._job_counts is not None:
            families += self._read("jobs", up, self._job_families)
        return [*families, up]

    @staticmethod
    def _read(source: str, up: GaugeMetricFamily, read: Callable[[], list[Metric]]) -> list[Metric]:
        try:
            families = read()
        except Exception:
            log.warning("metrics: could not read %s state for this scrape", source, exc_info=True)
            up.add_metric([source], 0)
            return []
        up.add_metric([source], 1)
        return families

    def _engine_families(self) -> list[Metric]:
        assert self._engine_stats is not None
        stats = self._engine_stats()
        families: list[Metric] = []
        for key, (name, documentation) in ENGINE_GAUGES.items():
            if (value := stats.get(key)) is not None:
                families.append(GaugeMetricFamily(name, documentation, value=value))
        for key, (name, documentation) in ENGINE_COUNTERS.items():
            if (value := stats.get(key)) is not None:
                families.append(CounterMetricFamily(name, documentation, value=value))
        return families

    def _job_families(self) -> list[Metric]:
        assert self._job_counts is not None
        counts = self._job_counts()
        jobs = GaugeMetricFamily(
            "openft_fine_tuning_jobs",
            "Fine-tuning jobs in the database by status, of every organization (every server sharing the "
            "database reports the same numbers: aggregate with max, not sum).",
            labels=["status"],
        )
        for status in JobStatus:  # every status, 0 included, so a series does not vanish when its last job moves
            jobs.add_metric([status.value], counts.get(status.value, 0))
        return [jobs]


def job_counts_from(sessions: sessionmaker[Session]) -> JobCounts:
    """The job table's count by status, read on a read-only session (a scrape never takes SQLite's write lock)."""
    reads = read_only_sessions(sessions)

    def counts() -> Mapping[str, int]:
        with reads.begin() as session:
            return repo.count_jobs_by_status(session)

    return counts


class Metrics:
    """One process's metrics: the registry, the serving feed and the scrape-time state; and, when
    `OPENFT_METRICS_PORT` is set, a plain HTTP listener on 127.0.0.1 that serves them without a key."""

    def __init__(
        self,
        *,
        engine_stats: EngineStats | None = None,
        job_counts: JobCounts | None = None,
        port: int | None = None,
    ):
        self.registry = CollectorRegistry()
        self.serving = ServingMetrics(self.registry)
        self.registry.register(StateCollector(engine_stats, job_counts))
        self._port = port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition (body, content type) the scraper asked for by its `Accept` header: OpenMetrics or the
        Prometheus text format (the default)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    @property
    def port(self) -> int | None:
        """The port the loopback listener is bound to (the real one when asked for port 0), or None if off."""
        return self._server.server_port if self._server is not None else None

    def start(self) -> None:
        """Open the loopback listener if a port is configured. Only 127.0.0.1: it has no authentication, so
        only this machine (a local Prometheus, a sidecar in the same network namespace) may reach it. A port
        already in use fails the start, rather than a server running without the metrics it was asked for."""
        if self._port is None or self._server is not None:
            return
        self._server, self._thread = start_http_server(self._port, addr="127.0.0.1", registry=self.registry)
        log.info("metrics: serving /metrics without a key on http://127.0.0.1:%d", self._server.server_port)

    def stop(self) -> None:
        """Close the loopback listener (if open) and free its port."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
