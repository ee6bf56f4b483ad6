"""metrics.jsonl (one line per optimizer step) and results.csv (the job's result file).

Each step must appear exactly once, even when a run is killed after step 17 but resumes from the
checkpoint of step 12: on resume the file is rewritten (atomically) with the steps up to the
checkpoint only, and steps 13.. are trained and appended again. Lines are flushed as they are
written and fsynced before every checkpoint commit, so a checkpoint's steps are always on disk.
Floats are written with Python's shortest round-trip repr, so values read back are bit-identical.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from openft.fsutil import atomic_write_text
from openft.trainer_contract import METRICS_FILE, RESULT_COLUMNS, read_metrics

RESULTS_FILE = "results.csv"
__all__ = ["METRICS_FILE", "RESULTS_FILE", "MetricsLog", "read_metrics", "write_results_csv"]


class MetricsLog:
    """Appends one JSON line per step to output_dir/metrics.jsonl."""

    def __init__(self, path: Path):
        self.path = path
        self._handle: Any = None

    def restart_after(self, step: int) -> None:
        """Keep only steps ≤ `step` (0: none), then append from there."""
        self.close()
        kept = [row for row in read_metrics(self.path) if row["step"] <= step]
        atomic_write_text(self.path, "".join(json.dumps(row) + "\n" for row in kept))
        self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - open for the whole run

    def append(self, row: dict[str, Any]) -> None:
        self._handle.write(json.dumps(row) + "\n")
        self._handle.flush()

    def sync(self) -> None:
        """Make every line written so far durable (before a checkpoint that counts on them)."""
        if self._handle is not None:
            self._handle.flush()
            os.fsync(self._handle.fileno())

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return repr(float(value)) if isinstance(value, float) else str(value)


def write_results_csv(metrics_path: Path, results_path: Path, columns: Sequence[str] = RESULT_COLUMNS) -> None:
    """The OpenAI-style result file: one row per step, empty cells where a value was not computed.

    `columns`: `trainer_contract.RESULT_COLUMNS` (supervised) or `trainer_contract.DPO_RESULT_COLUMNS`.
    """
    lines = [",".join(columns)]
    for row in read_metrics(metrics_path):
        lines.append(",".join(_cell(row.get(column)) for column in columns))
    atomic_write_text(results_path, "\n".join(lines) + "\n")
