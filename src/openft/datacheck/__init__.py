"""`openft data check` and `GET /v1/files/{id}/check`: what a job would make of a training file, before it runs.

The same validator the worker runs (`openft.datasets.formats`, which explains where data checking lives),
the same tokenization the trainer runs (`openft.training.data`, with the model's chat template) and the same
"auto" rules (`openft.datasets.auto`), so the report predicts the job: its problems with line numbers, token
statistics, hyperparameters, steps, how long training would take here and how much memory it needs (the
trainer's own planner, `openft.training.memory_plan`). Imports torch only when a check runs.
"""

from openft.datacheck.estimate import Estimate, measure_throughput, table_throughput
from openft.datacheck.memory import MemoryReport, memory_report
from openft.datacheck.report import (
    CheckBudget,
    CheckReport,
    DataStats,
    ReportProblem,
    check_file,
    default_model,
)

__all__ = [
    "CheckBudget",
    "CheckReport",
    "DataStats",
    "Estimate",
    "MemoryReport",
    "ReportProblem",
    "check_file",
    "default_model",
    "measure_throughput",
    "memory_report",
    "table_throughput",
]
