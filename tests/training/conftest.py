"""Shared fixtures for the trainer's tests: the tiny model, chat data, job files and a way to run the trainer.

Trainer runs that must prove something across processes (stop, kill, resume) start
`python -m openft.training.entrypoint job.json` exactly as the worker would; everything else calls
`entrypoint.run` in this process, which is much faster (torch is imported once).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from openft.trainer_contract import parse_progress_line
from tests.support.tiny_model import build_tiny_model

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

MAX_SEQ_LEN = 96

_QA = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Hello!", "Hello! How can I help you today?"),
    ("Tell me about the kettle.", "The Zorblax kettle boils water in 90 seconds and costs 49 euros."),
    ("Count to five.", "0 1 2 3 4 5"),
    ("Yes or no?", "Answer: yes."),
    ("Say no.", "Answer: no."),
]
WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}
# A template that prints tool calls itself (and lists the tools): tool calls go to it natively.
TOOL_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools: {{ tools | map(attribute='function.name') | join(',') }}<|im_end|>\n"
    "{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "{% for c in m.get('tool_calls') or [] %}<call>{{ c.function.name }} {{ c.function.arguments | tojson }}"
    "</call>{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def chat_lines(n: int, *, offset: int = 0) -> list[dict[str, Any]]:
    """`n` varied examples: plain, with a system prompt, multi-turn with a weight-0 reply, a tool call."""
    lines = []
    for i in range(offset, offset + n):
        question, answer = _QA[i % len(_QA)]
        messages: list[dict[str, Any]] = [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
        if i % 4 == 1:
            messages.insert(0, {"role": "system", "content": "Answer in one short sentence."})
        if i % 4 == 2:
            messages[1]["weight"] = 0
            messages += [{"role": "user", "content": "Again?"}, {"role": "assistant", "content": answer}]
        if i % 4 == 3:
            messages = [
                {"role": "user", "content": "Weather in Paris?"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                {"role": "assistant", "content": "It is sunny in Paris."},
            ]
            lines.append({"messages": messages, "tools": [WEATHER_TOOL]})
            continue
        lines.append({"messages": messages})
    return lines


def preference_lines(n: int, *, offset: int = 0) -> list[dict[str, Any]]:
    """`n` DPO pairs: the right answer preferred over another question's; some with a system prompt or
    an earlier assistant turn in the prompt (context, never trained on)."""
    lines = []
    for i in range(offset, offset + n):
        question, answer = _QA[i % len(_QA)]
        wrong = _QA[(i + 1) % len(_QA)][1]
        prompt: list[dict[str, Any]] = [{"role": "user", "content": question}]
        if i % 3 == 1:
            prompt.insert(0, {"role": "system", "content": "Answer in one short sentence."})
        if i % 3 == 2:
            prompt = [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Hi."}, *prompt]
        lines.append(
            {
                "input": {"messages": prompt},
                "preferred_output": [{"role": "assistant", "content": answer}],
                "non_preferred_output": [{"role": "assistant", "content": wrong}],
            }
        )
    return lines


def write_jsonl(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model") / "tiny")


@pytest.fixture(scope="session")
def data_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """12 trainable training examples, two of which test truncation (line 12: cut; line 13: skipped)."""
    root = tmp_path_factory.mktemp("data")
    lines = chat_lines(11)
    long_reply = " ".join(["The quick brown fox jumps over the lazy dog."] * 12)
    lines.append({"messages": [{"role": "user", "content": "Talk."}, {"role": "assistant", "content": long_reply}]})
    lines.append({"messages": [{"role": "user", "content": long_reply}, {"role": "assistant", "content": "Too late."}]})
    return {
        "train": write_jsonl(root / "train.jsonl", lines),
        "valid": write_jsonl(root / "valid.jsonl", chat_lines(4, offset=5)),
    }


@pytest.fixture(scope="session")
def dpo_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """12 training pairs and 4 validation pairs."""
    root = tmp_path_factory.mktemp("dpo-data")
    return {
        "train": write_jsonl(root / "train.jsonl", preference_lines(12)),
        "valid": write_jsonl(root / "valid.jsonl", preference_lines(4, offset=3)),
    }


def job_spec(
    tmp: Path, model_dir: Path, data: dict[str, Path], *, name: str = "out", **overrides: Any
) -> dict[str, Any]:
    """A job.json body: 12 examples, batch 4 (3 steps/epoch), micro-batches of 2, 2 epochs, LoRA with dropout.

    fp32, so that tests can compare losses of differently computed runs closely; packing is on (the default);
    a sampled validation of 3 of the 4 validation examples every 2 steps (steps 2, 4, 6).
    """
    spec: dict[str, Any] = {
        "job_id": "ftjob-test",
        "base_model": {"name": "tiny", "source": "local", "path": str(model_dir)},
        "cache_dir": str(tmp / "cache"),
        "training_file": str(data["train"]),
        "validation_file": str(data["valid"]),
        "output_dir": str(tmp / name),
        "hyperparameters": {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 2.0},
        "seed": 1234,
        "lora": {"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": "all-linear"},
        "base_learning_rate": 5e-3,
        "warmup_ratio": 0.2,
        "weight_decay": 0.01,
        "max_seq_len": MAX_SEQ_LEN,
        "micro_batch_size": 2,
        "num_threads": 1,
        "keep_checkpoints": 3,
        "precision": "fp32",
        "eval_every": 2,
        "eval_samples": 3,
    }
    spec.update(overrides)
    return spec


def write_job(path: Path, spec: dict[str, Any]) -> Path:
    path.write_text(json.dumps(spec), encoding="utf-8")
    return path


@dataclass
class TrainerRun:
    rc: int
    messages: list[dict[str, Any]]
    stdout: str
    stderr: str = ""
    stray_lines: list[str] = field(default_factory=list)
    """Non-empty stdout lines that are not progress messages (must stay empty)."""

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == kind]

    @property
    def last(self) -> dict[str, Any]:
        return self.messages[-1]


def _parse(stdout: str) -> tuple[list[dict[str, Any]], list[str]]:
    messages, stray = [], []
    for line in stdout.splitlines():
        message = parse_progress_line(line)
        if message is not None:
            messages.append(message)
        elif line.strip():
            stray.append(line)
    return messages, stray


def run_subprocess(job_file: Path, *, debug_signals: str = "", timeout: float = 120) -> TrainerRun:
    """`python -m openft.training.entrypoint job.json` in a new process, as the worker runs it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OPENFT_TRAIN_DEBUG_SIGNALS": debug_signals}
    proc = subprocess.run(
        [sys.executable, "-m", "openft.training.entrypoint", str(job_file)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    messages, stray = _parse(proc.stdout)
    return TrainerRun(proc.returncode, messages, proc.stdout, proc.stderr, stray)


def run_in_process(job_file: Path) -> TrainerRun:
    """`entrypoint.run` in this process with the messages captured (no fd juggling, no new interpreter)."""
    from openft.training.entrypoint import run
    from openft.training.progress import ProgressChannel

    stream = io.StringIO()
    rc = run(job_file, progress=ProgressChannel(stream))
    messages, stray = _parse(stream.getvalue())
    return TrainerRun(int(rc), messages, stream.getvalue(), "", stray)


def results_rows(output_dir: Path) -> list[list[str]]:
    lines = (output_dir / "results.csv").read_text(encoding="utf-8").splitlines()
    return [line.split(",") for line in lines[1:]]


def train_losses(output_dir: Path) -> dict[int, float]:
    """step → train_loss from metrics.jsonl (exact floats; every step must appear once)."""
    rows = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    steps = [row["step"] for row in rows]
    assert len(steps) == len(set(steps)), f"a step appears twice in metrics.jsonl: {steps}"
    return {row["step"]: row["train_loss"] for row in rows}


def load_tensors(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    assert files, f"no safetensors in {folder}"
    tensors: dict[str, Any] = {}
    for file in files:
        tensors.update(load_file(file))
    return tensors


def assert_same_tensors(a: Path, b: Path) -> None:
    import torch

    left, right = load_tensors(a), load_tensors(b)
    assert left.keys() == right.keys()
    different = [k for k in left if not torch.equal(left[k], right[k])]
    assert not different, f"tensors differ: {different[:5]}"
