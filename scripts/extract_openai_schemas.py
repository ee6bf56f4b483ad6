"""Extract the OpenAI schemas openft's tests validate against from OpenAI's published OpenAPI document.

The full document (OpenAI's `openapi.yaml` from github.com/openai/openai-openapi, MIT licence, 3 MB) is not
part of this repository (give its path; by default it is looked for next to the checkout); this script
copies the named schemas and everything they reference into tests/fixtures/openai-schemas.json, which the
tests load. `tests/test_openapi_fixture.py` re-runs the
extraction when the reference document is present and fails if the fixture has drifted.

    python scripts/extract_openai_schemas.py [path/to/openai-openapi.yaml]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference" / "openapi" / "openai-openapi.yaml"
FIXTURE = ROOT / "tests" / "fixtures" / "openai-schemas.json"
SCHEMAS = [
    "Batch",
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateCompletionResponse",
    "DeleteFileResponse",
    "DeleteFineTuningCheckpointPermissionResponse",
    "DeleteModelResponse",
    "ErrorResponse",
    "Eval",
    "EvalList",
    "EvalRun",
    "EvalRunList",
    "EvalRunOutputItem",
    "EvalRunOutputItemList",
    "FineTuningJob",
    "FineTuningJobCheckpoint",
    "FineTuningJobEvent",
    "ListBatchesResponse",
    "ListFilesResponse",
    "ListFineTuningCheckpointPermissionResponse",
    "ListFineTuningJobCheckpointsResponse",
    "ListFineTuningJobEventsResponse",
    "ListModelsResponse",
    "ListPaginatedFineTuningJobsResponse",
    "Model",
    "OpenAIFile",
    "Response",
    "ResponseItemList",
    "ResponseStreamEvent",
    "RunGraderResponse",
    "Upload",
    "UploadPart",
    "ValidateGraderResponse",
]


def _refs(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            found.add(ref.rsplit("/", 1)[-1])
        for value in node.values():
            found |= _refs(value)
    elif isinstance(node, list):
        for value in node:
            found |= _refs(value)
    return found


def extract(reference: Path) -> dict[str, Any]:
    document = yaml.safe_load(reference.read_text(encoding="utf-8"))
    schemas = document["components"]["schemas"]
    wanted, todo = {}, list(SCHEMAS)
    while todo:
        name = todo.pop()
        if name in wanted:
            continue
        wanted[name] = schemas[name]
        todo.extend(_refs(schemas[name]) - set(wanted))
    return {
        "info": {
            "source": "openai/openai-openapi openapi.yaml @ f85dbe2 (MIT licence, see LICENSE-openai-openapi)",
            "extracted_by": "scripts/extract_openai_schemas.py",
        },
        "components": {"schemas": dict(sorted(wanted.items()))},
    }


def render(reference: Path) -> str:
    return json.dumps(extract(reference), indent=1, sort_keys=True, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else REFERENCE
    FIXTURE.write_text(render(source), encoding="utf-8")
    print(f"wrote {FIXTURE} ({len(extract(source)['components']['schemas'])} schemas)")
