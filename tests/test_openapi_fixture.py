"""The vendored OpenAI schemas must be exactly what the extraction script makes from the reference document."""

from __future__ import annotations

import importlib.util

import pytest

from tests.support import openapi_schemas

spec = importlib.util.spec_from_file_location(
    "extract", openapi_schemas.SPEC_PATH.parents[2] / "scripts" / "extract_openai_schemas.py"
)
assert spec and spec.loader
extract = importlib.util.module_from_spec(spec)
spec.loader.exec_module(extract)


def test_fixture_matches_the_reference_document() -> None:
    if not extract.REFERENCE.exists():
        pytest.skip(f"the reference document is not at {extract.REFERENCE} (only present in the development workspace)")
    assert openapi_schemas.SPEC_PATH.read_text(encoding="utf-8") == extract.render(extract.REFERENCE)


def test_validation_rejects_a_wrong_object() -> None:
    openapi_schemas.validate({"error": {"message": "m", "type": "t", "param": None, "code": None}}, "ErrorResponse")
    with pytest.raises(Exception, match="required"):
        openapi_schemas.validate({"id": "file-1", "object": "file"}, "OpenAIFile")
