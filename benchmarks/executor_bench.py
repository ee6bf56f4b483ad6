"""Job start latency with the local and the Ray executor: from the claim to the first optimizer step.

One real server per executor (the Ray one on a fresh local Ray cluster: `ray start --head` on 127.0.0.1), the
same job on both (the tiny test model, `compute: {"workers": 2, "gpus_per_worker": 0}`, so both start two ranks),
run `--runs` times each. Measured from the client, polling every 20 ms: *claimed* is when the job is first seen
`running` (a worker claimed it and wrote its job.json), *first step* when its first `metrics` event is there.
The model is tiny on purpose: what is measured is the executors' own overhead (processes, Ray Train's controller
and worker group, imports), not loading a large model, which costs the same with either.

    .venv/bin/python benchmarks/executor_bench.py [--runs 3] [--json report.json]

Prints each run, the medians, and the ratio Ray / local.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from openai import OpenAI

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.support

from tests.support.data import jsonl_bytes, valid_examples  # noqa: E402
from tests.support.ray_cluster import ENV, ray_cluster  # noqa: E402
from tests.support.server import RunningServer, start_server  # noqa: E402
from tests.support.tiny_model import build_tiny_model  # noqa: E402

MODEL = "tiny-llama"
POLL = 0.02


def _one_job(client: OpenAI, training_id: str) -> tuple[float, float]:
    """(seconds from creation to the claim, seconds from the claim to the first step)."""
    method = {
        "type": "supervised",
        "supervised": {
            "hyperparameters": {"n_epochs": 1, "batch_size": 2, "compute": {"workers": 2, "gpus_per_worker": 0}}
        },
    }
    created = time.monotonic()
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=training_id, seed=1, method=method)  # type: ignore[arg-type]
    claimed = first_step = None
    deadline = created + 600
    while time.monotonic() < deadline and first_step is None:
        if claimed is None and client.fine_tuning.jobs.retrieve(job.id).status != "queued":
            claimed = time.monotonic()
        if claimed is not None and any(
            e.type == "metrics" for e in client.fine_tuning.jobs.list_events(job.id, limit=3)
        ):
            first_step = time.monotonic()
        time.sleep(POLL)
    if claimed is None or first_step is None:
        raise RuntimeError(f"job {job.id} did not reach its first step")
    while client.fine_tuning.jobs.retrieve(job.id).status not in ("succeeded", "failed", "cancelled"):
        time.sleep(0.2)
    return claimed - created, first_step - claimed


def _measure(server: RunningServer, runs: int) -> list[float]:
    client = OpenAI(base_url=f"{server.url}/v1", api_key=server.api_key, max_retries=0)
    training = client.files.create(file=("t.jsonl", jsonl_bytes(valid_examples(16))), purpose="fine-tune")
    latencies = []
    for run in range(runs):
        to_claim, to_step = _one_job(client, training.id)
        print(
            f"  run {run + 1}: claimed after {to_claim:.2f} s, first step {to_step:.2f} s after the claim", flush=True
        )
        latencies.append(to_step)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="executor-bench-") as folder:
        root = Path(folder)
        build_tiny_model(root / "models" / MODEL)
        report: dict[str, object] = {"machine": f"{platform.processor() or platform.machine()}, {platform.node()}"}
        print("local executor (2 ranks through the launcher)")
        local = start_server(root / "local", root / "models")
        try:
            report["local_s"] = _measure(local, args.runs)
        finally:
            local.stop()
        print("ray executor (2 Ray Train workers, on a local Ray cluster of 2 CPUs)")
        with ray_cluster(cpus=2) as cluster:
            env = {**ENV, "OPENFT_EXECUTOR": "ray", "OPENFT_RAY_ADDRESS": cluster.address}
            ray = start_server(root / "ray", root / "models", extra_env=env, start_timeout=120)
            try:
                report["ray_s"] = _measure(ray, args.runs)
            finally:
                ray.stop()
    local_median = statistics.median(report["local_s"])  # type: ignore[arg-type]
    ray_median = statistics.median(report["ray_s"])  # type: ignore[arg-type]
    report.update(local_median_s=local_median, ray_median_s=ray_median, ratio_ray_over_local=ray_median / local_median)
    print(f"claim → first step, median of {args.runs}: local {local_median:.2f} s, Ray {ray_median:.2f} s")
    print(f"ratio Ray / local: {ray_median / local_median:.2f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
