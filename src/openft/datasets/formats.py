"""Which training-data format a job's method reads, and the one way to check a file in it.

Data checking has three homes, one concept each:

- the rules: `chat.parse_example`, `preference.parse_preference_example` and `reinforcement.parse_rft_task`
  (messages and tools checked once, in `chat.py`, and reused by the others), with the line reader and the
  report builder of `chat.py`;
- this module: a method's format (`parse_file`) and pass/fail validation (`validate_for_method`, what the
  worker runs before training), and `detect_method` for a file whose method nobody named;
- `openft.datacheck`: the `openft data check` report (problems plus token statistics, "auto"
  hyperparameters and a time estimate), built on `parse_file` so it finds exactly the problems a job would;
  `openft.services.data_check` only serves that report over HTTP.

The trainer reads through the same parsers (`chat.read_examples`, `preference.read_preference_examples`),
so what validation accepts is exactly what training reads.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from openft.datasets import chat, preference, reinforcement
from openft.datasets.chat import Problem, ValidationReport
from openft.trainer_contract import TrainingMethod

PREFERENCE_KEYS = ("input", "preferred_output", "non_preferred_output", "preferred_completion")
"""Fields only preference (DPO) data has: a first line with one of them (and no `messages`) is DPO data."""


def parse_file(
    path: Path, method: TrainingMethod, *, stop: Callable[[int], bool] | None = None
) -> Iterator[tuple[int, Any, list[Problem]]]:
    """(line, example or None, problems) of every non-blank line of `path`, read as `method`'s data.

    `stop` ends the reading early (see `chat.iter_lines`): the data check's budget.
    """
    if method == "supervised":
        return chat.iter_parsed(Path(path), chat.parse_example, stop=stop)
    if method == "dpo":
        return chat.iter_parsed(Path(path), preference.parse_preference_example, stop=stop)
    if method == "reinforcement":
        return chat.iter_parsed(Path(path), reinforcement.parse_rft_task, stop=stop)
    raise ValueError(f"no training-data format for method {method!r}")


def validate_for_method(
    path: Path, method: TrainingMethod, *, min_examples: int = chat.MIN_EXAMPLES, max_problems: int = 20
) -> ValidationReport:
    """Validate `path` as the data of a `method` job (chat data for supervised, preference pairs for dpo,
    prompts with grader fields for reinforcement)."""
    return chat.build_report(parse_file(path, method), min_examples=min_examples, max_problems=max_problems)


def detect_method(path: Path) -> TrainingMethod:
    """`dpo` when the first line that is a JSON object holds preference fields, else `supervised`.

    Later lines are not looked at: a file mixing formats is then reported line by line as the wrong format,
    exactly as a job of the detected method would fail.
    """
    for _line, text, problem in chat.iter_lines(Path(path)):
        if problem is not None or text is None:
            continue
        try:
            obj = json.loads(text)
        except ValueError:
            continue
        if isinstance(obj, dict):
            return "dpo" if any(key in obj for key in PREFERENCE_KEYS) and "messages" not in obj else "supervised"
    return "supervised"
