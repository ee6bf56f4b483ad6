"""The data-check report: problems with line numbers, token statistics, "auto" hyperparameters, steps, time, memory.

One pass over the file with the worker's own parser (`openft.datasets.formats.parse_file`, what
`validate_for_method` checks with) keeps every valid example, so the statistics describe what training
would read even when some lines are broken (fix or drop those and this is the job). Token counts come from
the trainer's own tokenization (`openft.training.data.tokenize_example`: the model's chat template, the
prefix-checked masks), untruncated, so "over the context" means exactly "the trainer would cut it".

A `CheckBudget` bounds a check's time and the bytes it reads (the server's `GET /v1/files/{id}/check` runs
under one; the CLI does not): when it runs out the report says so (`truncated`, `checked_examples` and a
note) and covers what was checked; a job still validates and tokenizes the whole file.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openft.datacheck.estimate import Estimate
from openft.datacheck.memory import MemoryReport, memory_report
from openft.datasets import auto, chat
from openft.datasets.chat import Problem
from openft.datasets.formats import detect_method, parse_file
from openft.trainer_contract import DEFAULT_MAX_SEQ_LEN, TrainingMethod
from openft.trainer_contract import RFT_DEFAULT_MAX_COMPLETION_TOKENS as RFT_ANSWER_TOKENS
from openft.training.memory_plan import Mode

MAX_PROBLEMS = 100

Sequences = list[Any]
"""Token sequences (`openft.training.data.TokenizedExample`) of one training example: one for chat data,
the preferred and the rejected one for a preference pair."""
Throughput = Callable[[list[Sequences], int], Estimate]
"""Measures or looks up tokens/s for examples trained `batch_size` at a time; `seconds` is filled in later."""


@dataclass(frozen=True)
class ReportProblem:
    line: int | None
    code: str
    message: str

    @classmethod
    def of(cls, problem: Problem) -> ReportProblem:
        return cls(problem.line, problem.code, problem.message)

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line is not None else self.message


@dataclass(frozen=True)
class DataStats:
    examples: int
    tokens_min: int
    tokens_mean: float
    tokens_max: int
    total_tokens: int
    over_context: int
    context_length: int
    over_context_lines: list[int] = field(default_factory=list)
    """The first lines longer than `context_length` (the trainer truncates them, with a `warn` event)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "examples": self.examples,
            "tokens": {"min": self.tokens_min, "mean": round(self.tokens_mean, 1), "max": self.tokens_max},
            "total_tokens": self.total_tokens,
            "over_context": self.over_context,
            "context_length": self.context_length,
            "over_context_lines": self.over_context_lines,
        }


@dataclass(frozen=True)
class CheckBudget:
    """How long a check may take and how many bytes of the file it reads (None: no bound)."""

    seconds: float | None = None
    max_bytes: int | None = None


class _Spending:
    """A budget being spent: the clock started with the check, and why (if at all) it stopped early."""

    def __init__(self, budget: CheckBudget | None):
        self.budget = budget or CheckBudget()
        self.deadline = None if self.budget.seconds is None else time.monotonic() + self.budget.seconds
        self.reason: str | None = None

    def out_of_time(self) -> bool:
        if self.deadline is None or time.monotonic() <= self.deadline:
            return False
        if self.reason is None:
            self.reason = f"its {self.budget.seconds:g}-second budget ran out"
        return True

    def stop_reading(self, bytes_read: int) -> bool:
        if self.budget.max_bytes is not None and bytes_read >= self.budget.max_bytes:
            self.reason = self.reason or f"its {self.budget.max_bytes:,}-byte budget was read"
            return True
        return self.out_of_time()


@dataclass
class CheckReport:
    filename: str
    method: TrainingMethod
    model: str
    problems: list[ReportProblem]
    n_problems: int
    file: str | None = None
    stats: DataStats | None = None
    auto: auto.Resolved | None = None
    steps: int | None = None
    estimate: Estimate | None = None
    memory: MemoryReport | None = None
    """The memory planner's estimate for a job on this file (`openft.datacheck.memory`)."""
    notes: list[str] = field(default_factory=list)
    truncated: bool = False
    """A budget cut the check short: problems and statistics cover only the part checked."""
    checked_examples: int | None = None
    """With `truncated`: the examples whose tokens were counted."""

    @property
    def ok(self) -> bool:
        """No problem found — in the part checked, when `truncated`."""
        return self.n_problems == 0

    def to_json(self) -> dict[str, Any]:
        """The documented shape (README "Command line"); the dashboard and `--json` both use it."""
        return {
            "object": "openft.data_check",
            "file": self.file,
            "filename": self.filename,
            "method": self.method,
            "model": self.model,
            "ok": self.ok,
            "problems": [{"line": p.line, "code": p.code, "message": p.message} for p in self.problems],
            "n_problems": self.n_problems,
            "stats": self.stats.to_json() if self.stats else None,
            "auto": (
                {
                    "n_epochs": self.auto.n_epochs,
                    "batch_size": self.auto.batch_size,
                    "learning_rate_multiplier": self.auto.learning_rate_multiplier,
                }
                if self.auto
                else None
            ),
            "steps": self.steps,
            "estimate": self.estimate.to_json() if self.estimate else None,
            "memory": self.memory.to_json() if self.memory else None,
            "notes": self.notes,
            "truncated": self.truncated,
            "checked_examples": self.checked_examples,
        }


def default_model(catalog: Any) -> str | None:
    """The model a check uses when none is named: the first base model of the models dir (by name), else the
    built-in SmolLM2 (None when there is neither). A models dir's model is what its owner trains on, and
    choosing it avoids converting the built-in model just to count tokens."""
    from openft.basemodels import BUILTIN_MODEL_NAME

    local = [info.name for info in catalog.list() if info.source == "local"]
    if local:
        return local[0]
    return BUILTIN_MODEL_NAME if catalog.get(BUILTIN_MODEL_NAME) is not None else None


@functools.lru_cache(maxsize=8)
def _tokenizer(folder: str) -> Any:
    """The tokenizer the trainer would load (with its ChatML fallback); cached, the server checks often."""
    from openft.training.model import load_tokenizer

    return load_tokenizer(Path(folder))[0]


def _tokenize(tokenizer: Any, example: Any, method: TrainingMethod) -> Sequences:
    """Untruncated token sequences of one example, exactly as the trainer builds them."""
    from openft.training.data import answered_example, tokenize_example

    limit = 1 << 62
    if method == "reinforcement":  # the prompt alone: the answers are sampled in training
        from openft.training.data import TokenizedExample
        from openft.training.rft import prompt_ids

        ids = prompt_ids(tokenizer, example)
        return [TokenizedExample(example.line, ids, [False] * len(ids))]
    if method == "dpo":
        return [
            tokenize_example(tokenizer, answered_example(example, side), max_seq_len=limit)[0]
            for side in (example.chosen, example.rejected)
        ]
    return [tokenize_example(tokenizer, example, max_seq_len=limit)[0]]


def _kept(
    parsed: Iterator[tuple[int, Any, list[Problem]]], into: list[Any]
) -> Iterator[tuple[int, Any, list[Problem]]]:
    for line, example, problems in parsed:
        if example is not None and not problems:
            into.append(example)
        yield line, example, problems


def check_file(
    path: Path,
    *,
    model: str,
    tokenizer_folder: Path,
    context_length: int | None,
    method: TrainingMethod | None = None,
    file_id: str | None = None,
    filename: str | None = None,
    n_epochs: int | str = "auto",
    batch_size: int | str = "auto",
    learning_rate_multiplier: float | str = "auto",
    throughput: Throughput | None = None,
    fine_tuning_mode: Mode | None = "lora",
    max_problems: int = MAX_PROBLEMS,
    budget: CheckBudget | None = None,
) -> CheckReport:
    """Check `path` as a `method` job's training file on `model` (its tokenizer and config in `tokenizer_folder`);
    the memory a `fine_tuning_mode` job would need (None: not estimated)."""
    path = Path(path)
    spending = _Spending(budget)
    method = method or detect_method(path)
    examples: list[Any] = []
    parsed = parse_file(path, method, stop=spending.stop_reading)
    validation = chat.build_report(_kept(parsed, examples), min_examples=chat.MIN_EXAMPLES, max_problems=max_problems)
    read_all = spending.reason is None
    if not read_all:  # too few examples in the part read says nothing about the file
        kept = [p for p in validation.problems if p.kind != "n_examples"]
        validation.n_problems -= len(validation.problems) - len(kept)
        validation.problems = kept
    report = CheckReport(
        filename=filename or path.name,
        method=method,
        model=model,
        problems=[ReportProblem.of(p) for p in validation.problems],
        n_problems=validation.n_problems,
        file=file_id,
    )
    if not examples:
        _note_cut(report, spending, validation.n_lines, 0)
        return report
    if validation.n_problems:
        report.notes.append(f"statistics cover the {len(examples)} valid example(s) only")

    tokenizer = _tokenizer(str(tokenizer_folder))
    max_seq_len = min(context_length or DEFAULT_MAX_SEQ_LEN, DEFAULT_MAX_SEQ_LEN)
    if method == "reinforcement":  # a prompt must leave room for an answer of the default length
        max_seq_len -= RFT_ANSWER_TOKENS
        fine_tuning_mode, throughput = None, None
        report.notes.append(
            f"reinforcement data: the statistics count each prompt's tokens; a prompt over {max_seq_len} tokens "
            f"leaves no room for a {RFT_ANSWER_TOKENS}-token answer (max_completion_tokens' default) and is set "
            "aside; no time or memory estimate (a reinforcement job's cost is sampling and grading)"
        )
    tokenized: list[Sequences] = []
    looked_at = 0
    for example in examples:
        if spending.out_of_time():
            break
        looked_at += 1
        try:
            tokenized.append(_tokenize(tokenizer, example, method))
        except chat.DataFormatError as exc:  # the model's chat template refuses this conversation
            report.n_problems += 1
            if len(report.problems) < max_problems:
                report.problems.append(ReportProblem.of(exc.problem))
    report.problems.sort(key=lambda p: (p.line is None, p.line or 0))
    _note_cut(report, spending, validation.n_lines, len(tokenized))
    if not tokenized:
        return report
    report.stats = _stats(tokenized, max_seq_len)
    n = len(tokenized) + (len(examples) - looked_at)  # examples not reached count as valid ones
    report.auto = auto.resolve(
        n, n_epochs=n_epochs, batch_size=batch_size, learning_rate_multiplier=learning_rate_multiplier
    )
    report.steps = report.auto.steps(n)
    truncated = [[_cut(s, max_seq_len) for s in seqs] for seqs in tokenized]
    if fine_tuning_mode is not None:
        report.memory = memory_report(
            tokenizer_folder,
            method=method,
            batch_size=report.auto.batch_size,
            max_seq_len=max_seq_len,
            longest_example=max(sum(len(s.input_ids) for s in seqs) for seqs in truncated),
            mode=fine_tuning_mode,
        )
    if throughput is not None:
        measured = throughput(truncated, report.auto.batch_size)
        trained = sum(len(s.input_ids) for seqs in truncated for s in seqs) * n / len(tokenized)
        report.estimate = measured.over(round(trained) * report.auto.n_epochs)
    return report


def _note_cut(report: CheckReport, spending: _Spending, lines: int, examples: int) -> None:
    """Say in the report that (and where) a budget cut the check short."""
    if spending.reason is None:
        return
    report.truncated = True
    report.checked_examples = examples
    report.notes.append(
        f"the check stopped early ({spending.reason}): it read {lines} line(s) and counted the tokens of "
        f"{examples} example(s); problems and statistics cover only those (a job checks the whole file)"
    )


def _cut(sequence: Any, max_seq_len: int) -> Any:
    from openft.training.data import TokenizedExample

    if len(sequence.input_ids) <= max_seq_len:
        return sequence
    return TokenizedExample(sequence.line, sequence.input_ids[:max_seq_len], sequence.target_mask[:max_seq_len])


def _stats(tokenized: Sequence[Sequences], max_seq_len: int) -> DataStats:
    lengths = [sum(len(s.input_ids) for s in seqs) for seqs in tokenized]
    over = [seqs[0].line for seqs in tokenized if any(len(s.input_ids) > max_seq_len for s in seqs)]
    return DataStats(
        examples=len(tokenized),
        tokens_min=min(lengths),
        tokens_mean=statistics.fmean(lengths),
        tokens_max=max(lengths),
        total_tokens=sum(lengths),
        over_context=len(over),
        context_length=max_seq_len,
        over_context_lines=over[:20],
    )
