"""`make demo-rft`'s code path (examples/rft/demo.py) on a real server, quickly: the same eval, job and grader
calls on the tiny model with the peaked probabilities (tests/training/test_rft.py says why) instead of
SmolLM2, one short epoch instead of the demo's two. What it checks is the plumbing the demo's numbers come
from: a reward per step from the job's events, and pass counts that agree with the answers the eval recorded.
Whether SmolLM2 really learns is measured by running the demo itself (its README section has the numbers)."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from openai import OpenAI

from tests.support.server import RunningServer, start_server
from tests.support.tiny_model import build_tiny_model

MODEL = "tiny-peaked"
EXAMPLE = Path(__file__).parents[2] / "examples" / "rft"


def load_demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rft_demo", EXAMPLE / "demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is being made
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    models = tmp_path_factory.mktemp("models")
    build_tiny_model(models / MODEL, initializer_range=0.2)
    running = start_server(tmp_path_factory.mktemp("server-data"), models)
    yield running
    running.stop()


@pytest.mark.e2e
def test_the_rft_demo_runs_its_eval_job_and_eval_again(server: RunningServer, tmp_path: Path) -> None:
    demo = load_demo()
    heldout = demo.read_lines(EXAMPLE / "heldout.jsonl")
    assert len(heldout) == 24 and all(line["answer"] for line in heldout)
    assert not {json.dumps(line) for line in heldout} & {json.dumps(line) for line in demo.read_lines(demo.TRAIN)}
    short_heldout = tmp_path / "heldout.jsonl"
    short_heldout.write_text("".join(json.dumps(line) + "\n" for line in heldout[:8]), encoding="utf-8")
    said: list[str] = []
    client = OpenAI(base_url=f"{server.url}/v1", api_key=server.api_key, max_retries=0)
    hyperparameters = {**demo.HYPERPARAMETERS, "n_epochs": 1, "max_completion_tokens": 4}
    outcome = demo.run_demo(
        client, model=MODEL, hyperparameters=hyperparameters, heldout=short_heldout, say=said.append
    )

    assert len(outcome.rewards) == 12 and all(0 <= r <= 1 for r in outcome.rewards)  # 46 prompts, batch 4
    assert sum(1 for line in said if "mean reward" in line) == 12
    for measured in (outcome.base, outcome.tuned):
        assert measured.total == 8 and len(measured.answers) == 8
        assert [reference for reference, _ in measured.answers] == [line["answer"] for line in heldout[:8]]
        # the eval's count is the exact check (whitespace aside) on the answers it recorded
        assert measured.passed == sum(reference == answer.strip() for reference, answer in measured.answers)
    assert outcome.base.model == MODEL and outcome.tuned.model == outcome.fine_tuned_model != MODEL
    job = client.fine_tuning.jobs.retrieve(outcome.job_id)
    assert job.method.type == "reinforcement" and job.status == "succeeded"
