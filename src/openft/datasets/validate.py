"""Pick the training-data validator of a job's method, so the worker does not need to know the formats."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from openft.datasets import chat, preference

Method = Literal["supervised", "dpo"]


def validate_for_method(
    path: Path, method: Method, *, min_examples: int = chat.MIN_EXAMPLES, max_problems: int = 20
) -> chat.ValidationReport:
    """Validate `path` as the data of a `method` job (chat data for supervised, preference pairs for dpo)."""
    if method == "supervised":
        return chat.validate_file(path, min_examples=min_examples, max_problems=max_problems)
    if method == "dpo":
        return preference.validate_preference_file(path, min_examples=min_examples, max_problems=max_problems)
    raise ValueError(f"no training-data format for method {method!r}")
