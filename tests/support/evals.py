"""The eval the eval tests start from: custom items of a question and its answer, graded by string checks.

The service tests, the API tests (through the SDK) and the dashboard's browser test all make it; one definition
keeps them on the same item schema and the same criterion names ("exact", "contains") that their assertions on
per-criterion results read back.
"""

from __future__ import annotations

from typing import Any

ITEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
    "required": ["question", "answer"],
}
EXACT: dict[str, Any] = {
    "type": "string_check",
    "name": "exact",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "operation": "eq",
}
"""Passes when the sample's output text is the item's answer."""
CONTAINS: dict[str, Any] = {**EXACT, "name": "contains", "operation": "ilike"}
"""Passes when the output text contains the answer, in any case."""


def qa_eval_fields(name: str = "qa", criteria: list[Any] | None = None, **config: Any) -> dict[str, Any]:
    """The fields of a create-eval request, for the SDK's `evals.create(**…)` or `CreateEvalRequest(**…)`.

    Items of ITEM_SCHEMA with their samples, graded by `criteria` (EXACT alone when None; an empty list is sent
    as is, for tests of that error); `config` adds to or overrides the data source config's fields.
    """
    return {
        "name": name,
        "data_source_config": {"type": "custom", "item_schema": ITEM_SCHEMA, "include_sample_schema": True, **config},
        "testing_criteria": [EXACT] if criteria is None else criteria,
    }
