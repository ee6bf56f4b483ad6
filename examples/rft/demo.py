"""`make demo-rft`: reinforcement fine-tuning that visibly learns, measured by an eval before and after.

SmolLM2-135M-Instruct is asked for capitals "with only the city name" and, even after a worked example,
answers about half the time with something else ("Cuba is the capital of Cuba.", capitals.py). Through the
official `openai` SDK against a real openft server this script: uploads the training prompts, creates an eval
whose testing criterion is the exact check, runs it on the base model (greedy answers to held-out countries),
creates a reinforcement job whose grader pays for the right city and for every word less around it, follows
it (mean reward per step), and runs the same eval on the fine-tuned model. It prints both pass rates, the
answers side by side and the time taken.

It starts `openft serve` itself, or uses a running server when `OPENFT_BASE_URL` (and `OPENFT_API_KEY`) are set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openai import OpenAI

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))  # examples/: demo_server
from capitals import HELDOUT, PASS_GRADER, REWARD_GRADER, TRAIN
from demo_server import DemoServer, add_server_options, start_server

BASE_MODEL = "SmolLM2-135M-Instruct"
HYPERPARAMETERS: dict[str, Any] = {
    "n_epochs": 3,
    "batch_size": 4,
    "learning_rate_multiplier": 10,  # × LoRA's base 2e-4: 2e-3 (15 drifted into nonsense within 12 steps)
    "compute_multiplier": 1,  # 4 sampled answers per prompt
    "max_completion_tokens": 12,  # a city name needs a few tokens; short answers keep sampling cheap
}
"""46 prompts: 12 steps per epoch, 36 steps (6.5 minutes of training on 2 CPU cores, measured)."""
ANSWER_TOKENS = 16
"""Greedy answers in the eval: long enough to show the base model's sentence, short enough to stay cheap."""
ITEM_SCHEMA = {
    "type": "object",
    "properties": {"messages": {"type": "array"}, "answer": {"type": "string"}},
    "required": ["messages", "answer"],
}
FINAL_RUN = {"completed", "failed", "canceled"}
FINAL_JOB = {"succeeded", "failed", "cancelled"}


@dataclass
class PassRate:
    model: str
    passed: int
    total: int
    seconds: float
    answers: list[tuple[str, str]]
    """(reference, answer) per held-out item, in order."""

    @property
    def rate(self) -> float:
        return self.passed / self.total if self.total else 0.0


@dataclass
class Outcome:
    job_id: str
    fine_tuned_model: str
    rewards: list[float]
    """Mean reward per step, from the job's metrics events."""
    base: PassRate
    tuned: PassRate
    job_seconds: float


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def pass_rate(client: OpenAI, eval_id: str, model: str, items: list[dict[str, Any]]) -> PassRate:
    """One eval run on `model`: each held-out prompt answered greedily, graded by the eval's exact check."""
    started = time.monotonic()
    run = client.evals.runs.create(
        eval_id,
        name=model,
        data_source={  # type: ignore[arg-type]  # the SDK's TypedDict union does not narrow on "type"
            "type": "completions",
            "model": model,
            "input_messages": {"type": "item_reference", "item_reference": "item.messages"},
            "sampling_params": {"temperature": 0, "max_completion_tokens": ANSWER_TOKENS, "seed": 0},
            "source": {"type": "file_content", "content": [{"item": item} for item in items]},
        },
    )
    while run.status not in FINAL_RUN:
        time.sleep(0.5)
        run = client.evals.runs.retrieve(run.id, eval_id=eval_id)
    if run.status != "completed":
        sys.exit(f"eval run {run.id} on {model} ended {run.status}: {run.error}")
    answers = []
    for output in client.evals.runs.output_items.list(run.id, eval_id=eval_id, limit=100, order="asc"):
        text = output.sample.output[0].content if output.sample.output else ""
        answers.append((str(output.datasource_item.get("answer")), text or ""))
    counts = run.result_counts
    return PassRate(model, counts.passed, counts.total, time.monotonic() - started, answers)


def follow(client: OpenAI, job_id: str, on_step: Callable[[dict[str, Any]], None]) -> Any:
    """Poll the job until it ends, calling `on_step` once per new metrics event (oldest first)."""
    seen = 0
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        events = list(client.fine_tuning.jobs.list_events(job_id, limit=100))
        for event in reversed(events):
            if event.type == "metrics" and event.data and event.data["step"] > seen:
                seen = event.data["step"]
                on_step(event.data)
        if job.status in FINAL_JOB:
            return job
        time.sleep(1)


def run_demo(
    client: OpenAI,
    *,
    model: str = BASE_MODEL,
    hyperparameters: dict[str, Any] | None = None,
    train: Path = TRAIN,
    heldout: Path = HELDOUT,
    say: Callable[[str], None] = print,
) -> Outcome:
    """The demo against `client`'s server: base eval, RFT job, tuned eval."""
    items = read_lines(heldout)
    evaluation = client.evals.create(
        name="capitals, only the city name",
        data_source_config={"type": "custom", "item_schema": ITEM_SCHEMA, "include_sample_schema": True},
        testing_criteria=[PASS_GRADER],  # type: ignore[list-item]
    )
    say(f"eval     {evaluation.id}: {len(items)} held-out countries, pass = answer is exactly the city")
    base = pass_rate(client, evaluation.id, model, items)
    say(f"base     {model}: {base.passed}/{base.total} pass ({base.seconds:.0f}s)")

    training = client.files.create(file=train.open("rb"), purpose="fine-tune")
    say(f"uploaded {train.name} as {training.id} ({training.bytes} bytes)")
    job = client.fine_tuning.jobs.create(
        model=model,
        training_file=training.id,
        suffix="capitals",
        seed=42,
        method={
            "type": "reinforcement",
            "reinforcement": {
                "grader": REWARD_GRADER,  # type: ignore[typeddict-item]
                "hyperparameters": hyperparameters or HYPERPARAMETERS,  # type: ignore[typeddict-item]
            },
        },
    )
    say(f"created  {job.id} (reinforcement, grader {REWARD_GRADER['name']!r})")
    rewards: list[float] = []

    def on_step(data: dict[str, Any]) -> None:
        rewards.append(float(data["train_reward_mean"]))
        say(
            f"  step {data['step']:>3}/{data['total_steps']}  mean reward {data['train_reward_mean']:.3f}  "
            f"KL {data.get('train_kl', 0):.3f}  answer tokens {data.get('train_completion_tokens', 0):.1f}"
        )

    job = follow(client, job.id, on_step)
    if job.status != "succeeded":
        sys.exit(f"job ended {job.status}: {job.error}")
    job_seconds = float((job.finished_at or 0) - job.created_at)
    say(f"trained  {job.fine_tuned_model} in {job_seconds:.0f}s")
    tuned = pass_rate(client, evaluation.id, job.fine_tuned_model, items)
    say(f"tuned    {job.fine_tuned_model}: {tuned.passed}/{tuned.total} pass ({tuned.seconds:.0f}s)")
    return Outcome(job.id, job.fine_tuned_model, rewards, base, tuned, job_seconds)


def report(outcome: Outcome, seconds: float) -> None:
    base, tuned = outcome.base, outcome.tuned
    print()
    print(f"{'answer':<14} {'base ' + base.model:<44} fine-tuned")
    for (reference, before), (_, after) in zip(base.answers, tuned.answers, strict=True):
        print(f"{reference:<14} {before.replace(chr(10), ' ')[:42]!r:<44} {after.replace(chr(10), ' ')[:30]!r}")
    print()
    print(
        f"held-out pass rate: base {base.rate:.0%} ({base.passed}/{base.total}) → fine-tuned {tuned.rate:.0%} "
        f"({tuned.passed}/{tuned.total})"
    )
    first, last = outcome.rewards[:3], outcome.rewards[-3:]
    if first and last:
        print(f"mean reward: first steps {sum(first) / len(first):.2f} → last steps {sum(last) / len(last):.2f}")
    print(f"demo finished in {seconds:.0f}s (training {outcome.job_seconds:.0f}s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_server_options(parser)
    args = parser.parse_args()
    started = time.monotonic()
    server: DemoServer | None = None
    base_url = os.environ.get("OPENFT_BASE_URL")
    if base_url:
        key = os.environ.get("OPENFT_API_KEY", "")
    else:
        server = start_server(args.data_dir, args.port)
        base_url, key = server.base_url, server.api_key
        print(f"server   {base_url}  (log: {server.log})")
    try:
        outcome = run_demo(OpenAI(base_url=base_url, api_key=key))
        report(outcome, time.monotonic() - started)
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
