"""Run inside host `a` of tests/e2e/test_ray_two_nodes.py: an openft server with the Ray executor, one 2-worker
job through the SDK; prints one JSON line (job id, status, error, data folder).

    python -m tests.support.ray_two_nodes_job ROOT RAY_ADDRESS MODELS_DIR
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from openai import OpenAI

from tests.support.data import jsonl_bytes, valid_examples
from tests.support.server import start_server


def main() -> None:
    root, address, models = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    env = {"OPENFT_EXECUTOR": "ray", "OPENFT_RAY_ADDRESS": address}
    server = start_server(root / "data", models, extra_env=env, start_timeout=120)
    try:
        client = OpenAI(base_url=f"{server.url}/v1", api_key=server.api_key, max_retries=0)
        training = client.files.create(file=("t.jsonl", jsonl_bytes(valid_examples(16))), purpose="fine-tune")
        hyperparameters = {"n_epochs": 2, "batch_size": 2, "compute": {"workers": 2, "gpus_per_worker": 0}}
        method = {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}
        job = client.fine_tuning.jobs.create(model="tiny-llama", training_file=training.id, seed=5, method=method)  # type: ignore[arg-type]
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline:
            job = client.fine_tuning.jobs.retrieve(job.id)
            if job.status in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(0.5)
        error = job.error.model_dump() if job.error else None
        print(json.dumps({"job_id": job.id, "status": job.status, "error": error, "data_dir": str(server.data_dir)}))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
