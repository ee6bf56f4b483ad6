"""Schemathesis extensions loaded by `st run` (via `SCHEMATHESIS_HOOKS`) in test_schemathesis.py.

The built-in checks see only what `/openapi.json` says; this one holds every error to the contract the
SDKs rely on even if the document drifts: a 4xx body is exactly the OpenAI envelope.
"""

from __future__ import annotations

import json

import schemathesis
from schemathesis import Case, CheckContext, Response

ENVELOPE_KEYS = {"message", "type", "param", "code"}


@schemathesis.check
def openai_error_envelope(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """Every 4xx answer is `{"error": {"message", "type", "param", "code"}}` with string message and type.

    The SDKs build their exceptions from `body["error"]`; a FastAPI `{"detail": …}` or an empty body
    would surface as an opaque error in the client.
    """
    if not 400 <= response.status_code < 500:
        return None
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(f"{response.status_code} body is not JSON: {response.content[:200]!r}") from None
    error = body.get("error") if isinstance(body, dict) else None
    assert isinstance(error, dict) and set(body) == {"error"}, f"no OpenAI error envelope: {body!r}"
    assert set(error) == ENVELOPE_KEYS, f"error keys {sorted(error)} != {sorted(ENVELOPE_KEYS)}"
    assert isinstance(error["message"], str) and error["message"], f"empty message: {error!r}"
    assert isinstance(error["type"], str) and error["type"], f"empty type: {error!r}"
    assert error["param"] is None or isinstance(error["param"], str), f"param: {error!r}"
    assert error["code"] is None or isinstance(error["code"], str), f"code: {error!r}"
    assert response.headers.get("content-type", [""])[0].startswith("application/json"), "errors are JSON"
    return True
