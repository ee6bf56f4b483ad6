"""Reinforcement fine-tuning (GRPO, training/rft.py) in real trainer processes: a straight run learns what its
grader rewards, a run stopped and then killed mid-way resumes bit-identical to it (sampling included), a
grader that fails on some answers scores them 0 and says so, without failing the job, and a model grader's
judge runs in the trainer, seeded so that a resumed run's judge answers alike.

The tiny model here is built with a larger init std than the other tests' (`initializer_range` 0.2): the
default one's next-token probabilities are nearly uniform and barely move in a few steps; this one's are
peaked, like a real model's, so a handful of steps shows learning."""

from __future__ import annotations

import json
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch

from openft.datasets.chat import DataFormatError
from openft.datasets.reinforcement import read_rft_tasks
from openft.trainer_contract import RFT_RESULT_COLUMNS, ExitCode
from openft.training.rft import group_advantages, grpo_token_loss, prepare_prompts, sampling_seed
from tests.support.tiny_model import build_tiny_model
from tests.training.conftest import TrainerRun, assert_same_tensors, job_spec, run_subprocess, write_job, write_jsonl
from tests.training.test_resume import metric_rows

STARTS_WITH_A_SPACE = {
    "type": "python",
    "name": "space first",
    "source": "def grade(sample, item):\n    return 1.0 if sample['output_text'].startswith(' ') else 0.0\n",
}
"""Rewards answers whose first token starts with a space: about 1 in 5 of the tiny model's at first."""
FAILS_ON_ODD_LENGTHS = {
    "type": "python",
    "name": "picky",
    "source": (
        "def grade(sample, item):\n"
        "    if len(sample['output_text']) % 2:\n"
        "        raise ValueError('odd')\n"
        "    return 1.0\n"
    ),
}


def judged_by(judge: Path) -> dict[str, Any]:
    """A label_model grader whose judge (a tiny model of its own) answers one token: the labels are the judge's
    vocabulary, every other one passing, so rewards vary with what the judge samples for each answer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(judge)
    labels = sorted({tokenizer.decode([i]).strip() for i in range(len(tokenizer))} - {""})
    return {
        "type": "label_model",
        "name": "judge",
        "model": "tiny-judge",
        "input": [{"role": "user", "content": "Is this right? {{ sample.output_text }}"}],
        "labels": labels,
        "passing_labels": labels[::2],
        "sampling_params": {"max_completions_tokens": 1},
    }


def rft_lines(n: int) -> list[dict[str, Any]]:
    return [{"messages": [{"role": "user", "content": f"Say {i}."}], "answer": str(i)} for i in range(n)]


class Runs:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.model = build_tiny_model(tmp / "tiny-peaked", initializer_range=0.2)
        self.judge = build_tiny_model(tmp / "tiny-judge", seed=1)
        self.data = {
            "train": write_jsonl(tmp / "train.jsonl", rft_lines(12)),
            "valid": write_jsonl(tmp / "valid.jsonl", rft_lines(4)),
        }
        self.runs: dict[str, list[TrainerRun]] = {}
        self.outputs: dict[str, Path] = {}

    def chain(self, name: str, grader: dict[str, Any], legs: list[str]) -> None:
        spec = job_spec(
            self.tmp,
            self.model,
            self.data,
            name=name,
            method="reinforcement",
            reinforcement={
                "grader": grader,
                "group_size": 4,
                "max_completion_tokens": 8,
                "judges": {"tiny-judge": {"name": "tiny-judge", "source": "local", "path": str(self.judge)}},
            },
        )
        self.outputs[name] = Path(spec["output_dir"])
        self.runs[name] = [
            run_subprocess(write_job(self.tmp / f"{name}-{i}.json", spec), debug_signals=signals)
            for i, signals in enumerate(legs)
        ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    found = Runs(tmp_path_factory.mktemp("rft"))
    chains = {
        "straight": (STARTS_WITH_A_SPACE, [""]),
        "resumed": (STARTS_WITH_A_SPACE, ["2:SIGUSR1", "4:SIGKILL", ""]),
        "picky": (FAILS_ON_ODD_LENGTHS, [""]),
        "judged": (judged_by(found.judge), [""]),
        "judged-resumed": (judged_by(found.judge), ["3:SIGUSR1", ""]),
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        for future in [pool.submit(found.chain, name, *chain) for name, chain in chains.items()]:
            future.result()
    return found


def test_a_straight_run_learns_what_its_grader_rewards(runs: Runs) -> None:
    run, out = runs.runs["straight"][0], runs.outputs["straight"]
    assert run.rc == ExitCode.COMPLETED, run.stderr[-3000:]
    metrics = run.of("metrics")
    rewards = [m["train_reward_mean"] for m in metrics]
    assert len(rewards) == 6 and sum(rewards[-2:]) / 2 > sum(rewards[:2]) / 2 + 0.3, rewards
    assert metrics[0]["train_kl"] == 0  # step 1 samples from the reference itself (LoRA's B is zero)
    assert all(m["train_grader_error_rate"] == 0 for m in metrics)
    assert [m["step"] for m in metrics if "valid_reward_mean" in m] == [2, 4, 6]
    assert "full_valid_reward_mean" in metrics[2] and "train_mean_token_accuracy" not in metrics[0]
    assert all(1 <= m["train_completion_tokens"] <= 8 for m in metrics)
    # trained_tokens counts what was really fed: 4 prompts × 4 answers, each prompt (~30 tokens) + its answer.
    fed = metrics[0]["trained_tokens"]
    assert 16 * (20 + metrics[0]["train_completion_tokens"]) < fed < 16 * (40 + metrics[0]["train_completion_tokens"])
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert tuple(header) == RFT_RESULT_COLUMNS


def test_stopped_and_killed_runs_resume_bit_identical(runs: Runs) -> None:
    stopped, killed, last = runs.runs["resumed"]
    assert stopped.rc == ExitCode.STOPPED and stopped.last["step"] == 2
    assert killed.rc == -signal.SIGKILL and killed.of("started")[0]["start_step"] == 2
    assert last.rc == ExitCode.COMPLETED, last.stderr[-3000:]
    straight, resumed = runs.outputs["straight"], runs.outputs["resumed"]
    assert metric_rows(resumed) == metric_rows(straight)  # rewards, KL, losses: float ==, so sampling too
    assert_same_tensors(straight / "model", resumed / "model")


def test_answers_the_grader_cannot_score_count_zero_and_are_reported(runs: Runs) -> None:
    run = runs.runs["picky"][0]
    assert run.rc == ExitCode.COMPLETED, run.stderr[-3000:]
    metrics = run.of("metrics")
    assert all(0 < m["train_grader_error_rate"] < 1 for m in metrics)
    for m in metrics:  # a scored answer gets 1, an unscored one 0: the reward is the share scored
        assert m["train_reward_mean"] == pytest.approx(1 - m["train_grader_error_rate"])
    warnings = [m["message"] for m in run.of("log") if m["level"] == "warn"]
    assert warnings and "could not score" in warnings[0] and "odd" in warnings[0]


def test_a_model_graders_judge_runs_in_the_trainer_and_resumes_bit_identical(runs: Runs) -> None:
    """The judge (a model of its own, loaded by the trainer) samples a label per answer, seeded by that answer:
    some pass, some fail, some are no label (errors, scored 0), and a run paused at step 3 ends identical."""
    straight, (stopped, last) = runs.runs["judged"][0], runs.runs["judged-resumed"]
    assert straight.rc == ExitCode.COMPLETED, straight.stderr[-3000:]
    assert stopped.rc == ExitCode.STOPPED and last.rc == ExitCode.COMPLETED, last.stderr[-3000:]
    metrics = straight.of("metrics")
    rewards = [m["train_reward_mean"] for m in metrics]
    assert len(rewards) == 6 and any(r > 0 for r in rewards) and any(r < 1 for r in rewards), rewards
    assert all(m["train_grader_error_rate"] < 1 for m in metrics)
    assert metric_rows(runs.outputs["judged-resumed"]) == metric_rows(runs.outputs["judged"])
    assert_same_tensors(runs.outputs["judged"] / "model", runs.outputs["judged-resumed"] / "model")


# pieces ----------------------------------------------------------------------------------------------
def test_group_advantages_and_the_clipped_loss() -> None:
    advantages = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]))
    assert torch.allclose(advantages, torch.tensor([1.0, -1.0, -1.0, 1.0]), atol=1e-3)
    assert torch.equal(group_advantages(torch.tensor([0.5, 0.5])), torch.zeros(2))  # nothing to learn from
    logprobs = torch.tensor([-1.0, -2.0], requires_grad=True)
    loss, kl = grpo_token_loss(logprobs, torch.tensor([-1.0, -1.0]), torch.tensor([1.0, -1.0]), beta=0.5, clip=0.2)
    assert kl[0].item() == 0 and kl[1].item() == pytest.approx(torch.e - 1 - 1)  # exp(1) − 1 − 1
    loss.sum().backward()
    assert logprobs.grad is not None
    # −A (the policy term) plus β·(1 − π_ref/π) (the KL term's gradient)
    assert logprobs.grad.tolist() == pytest.approx([-1.0, 1.0 + 0.5 * (1 - torch.e)])


def test_sampling_seeds_differ_by_step_and_prompt_and_repeat() -> None:
    seeds = {sampling_seed(7, step, index) for step in range(5) for index in range(5)}
    assert len(seeds) == 25 and sampling_seed(7, 3, 1) == sampling_seed(7, 3, 1)
    assert all(0 <= s < 2**63 for s in seeds)


def test_rft_data_and_prompts(tmp_path: Path) -> None:
    lines = [*rft_lines(2), {"messages": [{"role": "user", "content": "x " * 200}], "answer": "long"}]
    tasks = read_rft_tasks(write_jsonl(tmp_path / "ok.jsonl", lines))
    assert tasks[0].item == lines[0] and tasks[0].prompt_messages == lines[0]["messages"]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(build_tiny_model(tmp_path / "tiny"))
    prepared = prepare_prompts(tokenizer, tasks, max_seq_len=96, max_completion_tokens=8)
    assert [p.index for p in prepared.examples] == [0, 1] and prepared.skipped_lines == [3]
    assert tokenizer.decode(prepared.examples[0].prompt_ids).endswith("<|im_start|>assistant\n")

    bad = [
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, "must not end"),
        ({"prompt": "q"}, 'missing the "messages" list'),
        ({"input": {"messages": []}, "preferred_output": []}, r"preference \(DPO\) data"),
    ]
    for line, words in bad:
        with pytest.raises(DataFormatError, match=words):
            read_rft_tasks(write_jsonl(tmp_path / "bad.jsonl", [line]))
    with pytest.raises(DataFormatError, match="line 1"):
        read_rft_tasks(write_jsonl(tmp_path / "bad.jsonl", [json.dumps([1])]))  # type: ignore[list-item]
