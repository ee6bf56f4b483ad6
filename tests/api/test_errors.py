"""The error table: every failure leaves in the OpenAI envelope with the status the SDKs expect."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel

from openft.api.errors import ERROR_TABLE, install_error_handlers
from openft.errors import InvalidJobState, ModelNotFound, NotFound, OpenFTError, PayloadTooLarge


class Body(BaseModel):
    n: int


def _client() -> TestClient:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/body")
    def body(payload: Body) -> dict[str, int]:
        return {"n": payload.n}

    @app.get("/raise/{name}")
    def raise_(name: str) -> None:
        errors = {"state": InvalidJobState("no"), "model": ModelNotFound(param="model"), "big": PayloadTooLarge()}
        if name == "crash":
            raise RuntimeError("secret detail")
        raise errors[name]

    return TestClient(app, raise_server_exceptions=False)


def test_domain_errors_map_to_status_and_envelope() -> None:
    client = _client()
    response = client.get("/raise/state")
    assert response.status_code == 409 and response.headers["x-should-retry"] == "false"
    assert response.json() == {
        "error": {"message": "no", "type": "invalid_request_error", "param": None, "code": "invalid_job_state"}
    }
    model = client.get("/raise/model").json()["error"]
    assert model["code"] == "model_not_found" and model["param"] == "model"
    assert client.get("/raise/big").status_code == 413


def test_crashes_are_500_without_internals() -> None:
    response = _client().get("/raise/crash")
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "server_error" and "secret" not in response.text


def test_validation_and_json_errors_are_400() -> None:
    client = _client()
    bad = client.post("/body", json={"n": "x"}).json()["error"]
    assert bad["param"] == "n" and bad["code"] == "invalid_value"
    missing = client.post("/body", json={}).json()["error"]
    assert missing["param"] == "n" and missing["code"] == "missing_required_parameter"
    broken = client.post("/body", content=b"{", headers={"content-type": "application/json"})
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_json"
    unknown = client.get("/nope")
    assert unknown.status_code == 404 and unknown.json()["error"]["message"] == "Invalid URL (GET /nope)"


def test_subclasses_find_their_row() -> None:
    assert ModelNotFound in ERROR_TABLE and NotFound in ERROR_TABLE
    assert all(issubclass(cls, OpenFTError) for cls in ERROR_TABLE)
