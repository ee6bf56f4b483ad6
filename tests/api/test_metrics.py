"""`GET /metrics` (services/metrics.py, README "Metrics"): the exposition parses, the serving feed moves its
counters and histograms, the job gauges are the job table's, only admin keys read it on the API port, and the
optional loopback port serves it without a key and closes on shutdown."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from openft.api.app import create_app
from openft.domain.job_states import JobStatus
from openft.services.container import Container, build_container
from openft.services.metrics import ENDPOINTS, OUTCOMES, Metrics, job_counts_from
from openft.settings import Settings
from tests.conftest import TINY_MODEL_NAME
from tests.support.data import jsonl_bytes, valid_examples
from tests.support.server import free_port, start_server

SERVER_KEY = "sk-openft-metrics-test-server-key"


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition by (name, sorted labels); parsing also checks the format."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def served(tmp_path: Path, models_dir: Path) -> Iterator[tuple[TestClient, Container]]:
    """The real app and container with the lifespan running (the worker is not: jobs stay where they are put)."""
    settings = Settings(data_dir=tmp_path / "data", models_dir=models_dir, api_key=SERVER_KEY, metrics_port=0)
    container = build_container(settings, with_worker=False)
    with TestClient(create_app(settings, container=container)) as http:
        yield http, container


def _scrape(http: TestClient, key: str = SERVER_KEY) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = http.get("/metrics", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return _samples(response.text)


def test_the_exposition_parses_and_has_every_family(served: tuple[TestClient, Container]) -> None:
    http, _ = served
    response = http.get("/metrics", headers={"Authorization": f"Bearer {SERVER_KEY}"})
    families = {family.name: family.type for family in text_string_to_metric_families(response.text)}
    assert families["openft_requests"] == "counter"
    assert families["openft_output_tokens"] == "counter"
    assert families["openft_prompt_tokens"] == "counter"
    for name in (
        "openft_time_to_first_token_seconds",
        "openft_inter_token_latency_seconds",
        "openft_request_queue_seconds",
        "openft_batch_size",
    ):
        assert families[name] == "histogram", name
    assert families["openft_fine_tuning_jobs"] == "gauge"
    # what today's engine reports in stats(); the keys it does not report are left out, not shown as 0
    for name in ("bases_loaded", "adapters_loaded", "memory_bytes", "model_bytes"):
        assert families[f"openft_inference_{name}"] == "gauge", name
    assert families["openft_inference_models_evicted"] == "counter"
    samples = _samples(response.text)
    assert _value(samples, "openft_metrics_source_up", source="engine") == 1
    assert _value(samples, "openft_metrics_source_up", source="jobs") == 1
    # every endpoint × outcome exists from the start at 0, so rate() and alerts see a series before the first event
    for endpoint in ENDPOINTS:
        for outcome in OUTCOMES:
            assert _value(samples, "openft_requests_total", endpoint=endpoint, outcome=outcome) == 0


def test_the_serving_feed_moves_the_counters_and_histograms(served: tuple[TestClient, Container]) -> None:
    http, container = served
    feed = container.metrics.serving
    feed.request_finished("chat", "ok", prompt_tokens=12, completion_tokens=7)
    feed.request_finished("chat", "ok", prompt_tokens=3, completion_tokens=5)
    feed.request_finished("completions", "rejected", prompt_tokens=0, completion_tokens=0)
    feed.first_token("chat", 0.2)
    feed.queued(0.004)
    for gap in (0.03, 0.03, 2.0):
        feed.inter_token(gap)
    feed.batch(3)
    feed.batch(1)

    samples = _scrape(http)
    assert _value(samples, "openft_requests_total", endpoint="chat", outcome="ok") == 2
    assert _value(samples, "openft_requests_total", endpoint="completions", outcome="rejected") == 1
    assert _value(samples, "openft_requests_total", endpoint="chat", outcome="error") == 0
    assert _value(samples, "openft_prompt_tokens_total", endpoint="chat") == 15
    assert _value(samples, "openft_output_tokens_total", endpoint="chat") == 12
    assert _value(samples, "openft_output_tokens_total", endpoint="completions") == 0

    ttft = "openft_time_to_first_token_seconds_bucket"
    assert _value(samples, ttft, endpoint="chat", le="0.1") == 0
    assert _value(samples, ttft, endpoint="chat", le="0.25") == 1
    assert _value(samples, "openft_time_to_first_token_seconds_count", endpoint="completions") == 0
    assert _value(samples, "openft_request_queue_seconds_bucket", le="0.005") == 1
    assert _value(samples, "openft_request_queue_seconds_bucket", le="0.0025") == 0
    assert _value(samples, "openft_inter_token_latency_seconds_bucket", le="0.05") == 2
    assert _value(samples, "openft_inter_token_latency_seconds_bucket", le="2.5") == 3
    assert _value(samples, "openft_inter_token_latency_seconds_sum") == pytest.approx(2.06)
    assert _value(samples, "openft_batch_size_bucket", le="1.0") == 1
    assert _value(samples, "openft_batch_size_bucket", le="4.0") == 2
    assert _value(samples, "openft_batch_size_sum") == 4


def test_an_unknown_endpoint_or_outcome_is_a_caller_bug() -> None:
    feed = Metrics().serving
    with pytest.raises(ValueError, match="endpoint/outcome"):
        feed.request_finished("chat", "finished", 1, 1)
    with pytest.raises(ValueError, match="endpoint"):
        feed.first_token("embeddings", 0.1)
    with pytest.raises(ValueError):
        feed.request_finished("chat", "ok", -1, 0)


def _create_job(http: TestClient) -> str:
    auth = {"Authorization": f"Bearer {SERVER_KEY}"}
    files = {"file": ("train.jsonl", jsonl_bytes(valid_examples(12)), "application/jsonl")}
    uploaded = http.post("/v1/files", headers=auth, data={"purpose": "fine-tune"}, files=files)
    assert uploaded.status_code == 200, uploaded.text
    body = {"model": TINY_MODEL_NAME, "training_file": uploaded.json()["id"]}
    created = http.post("/v1/fine_tuning/jobs", headers=auth, json=body)
    assert created.status_code == 200, created.text
    return str(created.json()["id"])


def test_the_job_gauges_are_the_job_tables_counts(served: tuple[TestClient, Container]) -> None:
    http, _ = served
    samples = _scrape(http)
    for status in JobStatus:
        assert _value(samples, "openft_fine_tuning_jobs", status=status.value) == 0

    job_ids = [_create_job(http) for _ in range(3)]
    cancelled = http.post(
        f"/v1/fine_tuning/jobs/{job_ids[0]}/cancel", headers={"Authorization": f"Bearer {SERVER_KEY}"}
    )
    assert cancelled.status_code == 200, cancelled.text

    samples = _scrape(http)
    assert _value(samples, "openft_fine_tuning_jobs", status="validating_files") == 2
    assert _value(samples, "openft_fine_tuning_jobs", status="cancelled") == 1
    assert sum(_value(samples, "openft_fine_tuning_jobs", status=s.value) for s in JobStatus) == 3


def test_a_chat_completion_shows_in_the_engine_gauges(served: tuple[TestClient, Container]) -> None:
    """The engine's own stats() are read at scrape time: the model a chat loaded is counted."""
    http, _ = served
    before = _scrape(http)
    assert _value(before, "openft_inference_bases_loaded") == 0
    body = {"model": TINY_MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    answer = http.post("/v1/chat/completions", headers={"Authorization": f"Bearer {SERVER_KEY}"}, json=body)
    assert answer.status_code == 200, answer.text
    after = _scrape(http)
    assert _value(after, "openft_inference_bases_loaded") == 1
    assert _value(after, "openft_inference_model_bytes") > 0


def test_only_admin_keys_read_metrics_on_the_api_port(served: tuple[TestClient, Container]) -> None:
    http, container = served
    missing = http.get("/metrics")
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "invalid_api_key"
    wrong = http.get("/metrics", headers={"Authorization": "Bearer sk-openft-not-a-key"})
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "invalid_api_key"

    tenant = container.keys.create("tenant").key
    refused = http.get("/metrics", headers={"Authorization": f"Bearer {tenant}"})
    assert refused.status_code == 403
    error = refused.json()["error"]
    assert (error["code"], error["type"]) == ("permission_denied", "invalid_request_error")
    assert "admin" in error["message"]

    operator = container.keys.create("ops", admin=True).key
    assert _value(_scrape(http, operator), "openft_metrics_source_up", source="jobs") == 1
    assert http.get("/metrics", headers={"api-key": operator}).status_code == 200  # Azure's header too


def test_openmetrics_is_served_when_asked_for(served: tuple[TestClient, Container]) -> None:
    http, _ = served
    headers = {"Authorization": f"Bearer {SERVER_KEY}", "Accept": "application/openmetrics-text; version=1.0.0"}
    response = http.get("/metrics", headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")


def test_metrics_is_not_in_the_openapi_document(served: tuple[TestClient, Container]) -> None:
    http, _ = served
    assert "/metrics" not in http.get("/openapi.json").json()["paths"]


def test_the_loopback_port_serves_without_a_key_and_closes_on_shutdown(tmp_path: Path, models_dir: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", models_dir=models_dir, api_key=SERVER_KEY, metrics_port=0)
    container = build_container(settings, with_worker=False)
    with TestClient(create_app(settings, container=container)):
        port = container.metrics.port
        assert port is not None
        container.metrics.serving.request_finished("completions", "timeout", 4, 1)
        response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        assert response.status_code == 200
        samples = _samples(response.text)
        assert _value(samples, "openft_requests_total", endpoint="completions", outcome="timeout") == 1
        assert _value(samples, "openft_metrics_source_up", source="jobs") == 1
    assert container.metrics.port is None
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=5):
        pass


def test_no_loopback_port_unless_configured(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "other", api_key=SERVER_KEY)
    assert settings.metrics_port is None
    metrics = Metrics(port=settings.metrics_port)
    metrics.start()
    assert metrics.port is None
    metrics.stop()


def test_a_failing_source_is_reported_down_and_the_scrape_still_answers(tmp_path: Path) -> None:
    """A database without the job table (a real SQLAlchemy error at scrape time): the jobs source is down, the
    serving numbers are still there."""
    engine = create_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        metrics = Metrics(job_counts=job_counts_from(sessionmaker(bind=engine)))
        metrics.serving.request_finished("chat", "cancelled", 2, 0)
        body, content_type = metrics.render()
        assert content_type.startswith("text/plain")
        samples = _samples(body.decode())
        assert _value(samples, "openft_metrics_source_up", source="jobs") == 0
        assert not any(name == "openft_fine_tuning_jobs" for name, _ in samples)
        assert _value(samples, "openft_requests_total", endpoint="chat", outcome="cancelled") == 1
    finally:
        engine.dispose()


def test_two_apps_in_one_process_keep_their_own_counts(tmp_path: Path) -> None:
    first, second = Metrics(), Metrics()
    first.serving.request_finished("chat", "ok", 1, 1)
    count = "openft_requests_total"
    assert _value(_samples(first.render()[0].decode()), count, endpoint="chat", outcome="ok") == 1
    assert _value(_samples(second.render()[0].decode()), count, endpoint="chat", outcome="ok") == 0


def test_a_real_server_serves_metrics_on_both_ports(tmp_path: Path, models_dir: Path) -> None:
    """`openft serve` with OPENFT_METRICS_PORT: the admin key on the API port, no key on the loopback port, and
    the loopback port is closed once the server has stopped (SIGTERM)."""
    metrics_port = free_port()
    env = {"OPENFT_METRICS_PORT": str(metrics_port)}
    server = start_server(
        tmp_path / "server", models_dir, extra_env=env, api_key=SERVER_KEY, extra_args=["--no-worker"]
    )
    try:
        assert httpx.get(f"{server.url}/metrics", timeout=10).status_code == 401
        on_api = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {SERVER_KEY}"}, timeout=10)
        assert on_api.status_code == 200
        local = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10)
        assert local.status_code == 200
        for text in (on_api.text, local.text):
            assert _value(_samples(text), "openft_fine_tuning_jobs", status="queued") == 0
    finally:
        server.stop()
    assert "Application shutdown complete" in server.log()  # the lifespan ran to its end (Container.close)
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", metrics_port), timeout=5):
        pass
