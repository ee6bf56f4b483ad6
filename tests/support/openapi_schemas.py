"""Validate responses against OpenAI's published OpenAPI schemas.

The schemas come from tests/fixtures/openai-schemas.json, extracted from OpenAI's document by
scripts/extract_openai_schemas.py (tests/test_openapi_fixture.py guards against drift). They are loaded
once; `validate(instance, "FineTuningJob")` checks an object against `#/components/schemas/FineTuningJob`
with every `$ref` resolved. The document's OpenAPI-3.0 leftovers are translated to JSON Schema 2020-12
(boolean exclusive bounds become numbers, `nullable: true` a null alternative). Our documented extension
statuses (`pausing`, `paused`; docs/api-compatibility.md §3) are added to the job status enum; nothing else is relaxed.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

SPEC_PATH = Path(__file__).resolve().parents[1] / "fixtures" / "openai-schemas.json"


@functools.cache
def _document() -> dict[str, Any]:
    document = json.loads(SPEC_PATH.read_text(encoding="utf-8"))
    _fix_boolean_exclusive_bounds(document)
    document = _fix_nullable(document)
    status = document["components"]["schemas"]["FineTuningJob"]["properties"]["status"]
    status["enum"] = [*status["enum"], "pausing", "paused"]
    _allow_eval_nulls(document["components"]["schemas"])
    return document


def _allow_eval_nulls(schemas: dict[str, Any]) -> None:
    """OpenAI's Evals API answers null where its schemas name a plain type (its own examples show `"error":
    null` on a run without error): a run's `error` and `model` (a jsonl run samples no model), and an output
    item's sample `error` and sampling params (a jsonl run's items were not sampled)."""
    run = schemas["EvalRun"]["properties"]
    sample = schemas["EvalRunOutputItem"]["properties"]["sample"]["properties"]
    for props, names in (
        (run, ("error", "model")),
        (sample, ("error", "temperature", "max_completion_tokens", "top_p", "seed")),
    ):
        for name in names:
            props[name] = {"anyOf": [props[name], {"type": "null"}]}


def _fix_boolean_exclusive_bounds(node: Any) -> None:
    """The document mixes OpenAPI 3.0's `exclusiveMinimum: true` into 3.1 schemas; in JSON Schema 2020-12
    the bound is a number, and Python's `True == 1` would silently turn it into "greater than 1"."""
    if isinstance(node, dict):
        for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
            if node.get(exclusive) is True and bound in node:
                node[exclusive] = node.pop(bound)
            elif node.get(exclusive) is False:
                node.pop(exclusive)
        for value in node.values():
            _fix_boolean_exclusive_bounds(value)
    elif isinstance(node, list):
        for value in node:
            _fix_boolean_exclusive_bounds(value)


def _fix_nullable(node: Any) -> Any:
    """OpenAPI 3.0's `nullable: true` means "or null"; JSON Schema 2020-12 ignores the keyword."""
    if isinstance(node, list):
        return [_fix_nullable(value) for value in node]
    if not isinstance(node, dict):
        return node
    node = {key: _fix_nullable(value) for key, value in node.items()}
    if node.pop("nullable", False) is True:
        if isinstance(node.get("type"), str):
            node["type"] = [node["type"], "null"]
            if "enum" in node:
                node["enum"] = [*node["enum"], None]
        else:
            return {"anyOf": [node, {"type": "null"}]}
    return node


@functools.cache
def _registry() -> Registry:
    return Registry().with_resource("urn:openai", Resource.from_contents(_document(), default_specification=_spec()))


def _spec() -> Any:
    from referencing.jsonschema import DRAFT202012

    return DRAFT202012


def validate(instance: Any, schema_name: str) -> None:
    """Raise jsonschema.ValidationError when `instance` does not match OpenAI's schema."""
    schema = {"$ref": f"urn:openai#/components/schemas/{schema_name}"}
    Draft202012Validator(schema, registry=_registry()).validate(instance)
