"""`POST /v1/fine_tuning/alpha/graders/run` and `/validate` in process: every grader type through the HTTP
layer (a score_model judged by the tiny model), answers checked against OpenAI's published schemas, and
bad input as a 400 in the OpenAI envelope naming the field, never a 500. A judge is a model the key may
use: another organization's fine-tuned model, or its alias, is a 400 as if it did not exist."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from openft.api.app import create_app
from openft.graders import SampleError
from openft.graders.model_graders import parse_score
from openft.protocol.fine_tuning import FineTuningJobCreate
from openft.protocol.graders import MAX_GRADER_BYTES, MAX_ITEM_BYTES, MAX_MODEL_SAMPLE_CHARS, RunGraderRequest
from openft.services.aliases import AliasService
from openft.services.container import Container, build_container
from openft.services.graders import GraderService
from openft.services.models import Caller
from openft.settings import Settings
from tests.conftest import TINY_MODEL_NAME
from tests.services.test_tenancy import _succeed, _upload
from tests.support import openapi_schemas

KEY = "sk-openft-graders-test"
RUN = {
    "openai": "/v1/fine_tuning/alpha/graders/run",
    "azure-v1": "/openai/v1/fine_tuning/alpha/graders/run",
    "azure-dated": "/openai/fine_tuning/alpha/graders/run?api-version=2025-04-01-preview",
}
VALIDATE = "/v1/fine_tuning/alpha/graders/validate"
STRING_CHECK = {
    "type": "string_check",
    "name": "label check",
    "input": "{{sample.output_text}}",
    "reference": "{{item.label}}",
    "operation": "eq",
}
SIMILARITY = {
    "type": "text_similarity",
    "name": "close enough",
    "input": "{{sample.output_text}}",
    "reference": "{{item.label}}",
    "evaluation_metric": "fuzzy_match",
}
PYTHON = {
    "type": "python",
    "name": "json steps",
    "source": (
        "def grade(sample, item):\n"
        "    steps = (sample['output_json'] or {}).get('steps', [])\n"
        "    return len(steps) / item['want']\n"
    ),
}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[tuple[TestClient, Container]]:
    """One app for the module: the tiny model, once loaded as a judge, answers the later score_model tests."""
    data = tmp_path_factory.mktemp("graders")
    settings = Settings(data_dir=data / "data", models_dir=models_dir, api_key=KEY, run_worker=False)
    container = build_container(settings, with_worker=False)
    with TestClient(create_app(settings, container=container)) as client:
        yield client, container


def _post(client: TestClient, url: str, body: dict[str, Any], key: str = KEY) -> Any:
    return client.post(url, json=body, headers={"Authorization": f"Bearer {key}"})


def _run(client: TestClient, grader: dict[str, Any], sample: str, item: Any = None, key: str = KEY) -> dict[str, Any]:
    body: dict[str, Any] = {"grader": grader, "model_sample": sample}
    if item is not None:
        body["item"] = item
    response = _post(client, RUN["openai"], body, key)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    openapi_schemas.validate(answer, "RunGraderResponse")
    return answer


def _bad(client: TestClient, url: str, body: dict[str, Any], param: str, key: str = KEY) -> dict[str, Any]:
    response = _post(client, url, body, key)
    assert response.status_code == 400, response.text
    openapi_schemas.validate(response.json(), "ErrorResponse")
    error: dict[str, Any] = response.json()["error"]
    assert error["param"] == param, error
    assert error["type"] == "invalid_request_error"
    return error


def _flags(answer: dict[str, Any]) -> set[str]:
    return {name for name, value in answer["metadata"]["errors"].items() if value is True}


@pytest.mark.parametrize("dialect", list(RUN))
def test_string_check_on_every_dialect(served: tuple[TestClient, Container], dialect: str) -> None:
    client, _ = served
    body = {"grader": STRING_CHECK, "model_sample": "Paris", "item": {"label": "Paris"}}
    response = client.post(RUN[dialect], json=body, headers={"api-key": KEY})
    assert response.status_code == 200, response.text
    answer = response.json()
    openapi_schemas.validate(answer, "RunGraderResponse")
    assert answer["reward"] == 1.0
    metadata = answer["metadata"]
    assert (metadata["name"], metadata["type"]) == ("label check", "string_check")
    assert _flags(answer) == set() and metadata["execution_time"] >= 0
    assert metadata["token_usage"] is None and metadata["sampled_model_name"] is None
    assert answer["sub_rewards"] == {} and answer["model_grader_token_usage_per_model"] == {}


def test_string_check_operations_and_missing_variable(served: tuple[TestClient, Container]) -> None:
    client, _ = served
    assert _run(client, {**STRING_CHECK, "operation": "ne"}, "Paris", {"label": "Paris"})["reward"] == 0.0
    assert _run(client, {**STRING_CHECK, "operation": "ilike"}, "PARIS, France", {"label": "paris"})["reward"] == 1.0
    missing = _run(client, STRING_CHECK, "Paris", {"other": 1})  # {{item.label}} is not in the item
    assert missing["reward"] == 0.0 and _flags(missing) == {"invalid_variable_error"}


def test_text_similarity(served: tuple[TestClient, Container]) -> None:
    client, _ = served
    assert _run(client, SIMILARITY, "the cat sat", {"label": "the cat sat"})["reward"] == 1.0
    partial = _run(client, SIMILARITY, "the cat sat", {"label": "the dog sat"})["reward"]
    assert 0.5 < partial < 1.0
    rouge = _run(client, {**SIMILARITY, "evaluation_metric": "rouge_1"}, "a b c d", {"label": "a b x y"})
    assert rouge["reward"] == pytest.approx(0.5)


def test_cosine_with_the_operators_embeddings_model(models_dir: Path, tmp_path: Path) -> None:
    """`OPENFT_EMBEDDING_MODEL` (here the tiny model's folder) makes `cosine` a grader like the others."""
    settings = Settings(
        data_dir=tmp_path / "data",
        models_dir=models_dir,
        api_key=KEY,
        run_worker=False,
        embedding_model=models_dir / TINY_MODEL_NAME,
    )
    cosine = {**SIMILARITY, "evaluation_metric": "cosine"}
    with TestClient(create_app(settings, container=build_container(settings, with_worker=False))) as client:
        assert _post(client, VALIDATE, {"grader": cosine}).status_code == 200
        same = _run(client, cosine, "a red apple", {"label": "a red apple"})
        assert same["reward"] == pytest.approx(1.0, abs=1e-6) and not _flags(same)
        other = _run(client, cosine, "a red apple", {"label": "quantum field theory"})
        assert -1 <= other["reward"] < 0.999 and not _flags(other)


def test_python_grader_reward_and_runtime_error(served: tuple[TestClient, Container]) -> None:
    client, _ = served
    answer = _run(client, PYTHON, '{"steps": [1, 2, 3]}', {"want": 4})
    assert answer["reward"] == pytest.approx(0.75) and _flags(answer) == set()
    failed = _run(client, PYTHON, "not json", {"want": 0})  # output_json is null: no steps, then 0 / 0
    assert failed["reward"] == 0.0 and "python_grader_runtime_error" in _flags(failed)
    assert "ZeroDivisionError" in (failed["metadata"]["errors"]["python_grader_runtime_error_details"] or "")


def test_multi_grader_combines_sub_rewards(served: tuple[TestClient, Container]) -> None:
    client, _ = served
    grader = {
        "type": "multi",
        "name": "both",
        "graders": {"exact": STRING_CHECK, "close": SIMILARITY, "steps": PYTHON},
        "calculate_output": "0.5 * exact + 0.25 * close + 0.25 * steps",
    }
    answer = _run(client, grader, '{"steps": [1, 2]}', {"label": '{"steps": [1, 2]}', "want": 2})
    assert answer["sub_rewards"] == {"exact": 1.0, "close": 1.0, "steps": 1.0}
    assert answer["reward"] == pytest.approx(1.0) and answer["metadata"]["type"] == "multi"
    answer = _run(client, grader, '{"steps": [1]}', {"label": '{"steps": [1, 2]}', "want": 2})
    assert answer["sub_rewards"]["exact"] == 0.0 and answer["sub_rewards"]["steps"] == 0.5
    expected = 0.25 * answer["sub_rewards"]["close"] + 0.25 * 0.5
    assert answer["reward"] == pytest.approx(expected)


def _score_grader(model: str = TINY_MODEL_NAME, **sampling: Any) -> dict[str, Any]:
    return {
        "type": "score_model",
        "name": "judge",
        "model": model,
        "input": [
            {"role": "system", "content": "Score the answer from 0 to 1. Reply with the number only."},
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "Reference: {{item.label}}\nAnswer: {{sample.output_text}}"}
                ],
            },
        ],
        "sampling_params": {"temperature": 0, "max_completions_tokens": 6, **sampling},
    }


def test_score_model_judged_by_an_openft_model(served: tuple[TestClient, Container]) -> None:
    """The tiny model is random: its score is noise, so the shape is checked, and the reward against what the
    same greedy chat answers. That answer is no score, which must be reward 0 with the parse flag."""
    client, _ = served
    answer = _run(client, _score_grader(), "Paris", {"label": "Paris"})
    metadata = answer["metadata"]
    assert metadata["type"] == "score_model" and metadata["sampled_model_name"] == TINY_MODEL_NAME
    usage = answer["model_grader_token_usage_per_model"][TINY_MODEL_NAME]
    assert 0 < usage["completion_tokens"] <= 6 and usage["prompt_tokens"] > 10
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] == metadata["token_usage"]

    # the judge's answer, asked again as a plain chat: greedy, so the same text
    chat = _post(
        client,
        "/v1/chat/completions",
        {
            "model": TINY_MODEL_NAME,
            "messages": [
                {"role": "system", "content": "Score the answer from 0 to 1. Reply with the number only."},
                {"role": "user", "content": "Reference: Paris\nAnswer: Paris"},
            ],
            "temperature": 0,
            "max_completion_tokens": 6,
        },
    ).json()
    assert chat["usage"]["prompt_tokens"] == usage["prompt_tokens"]
    text = chat["choices"][0]["message"]["content"]
    with pytest.raises(SampleError):  # the tiny model's greedy answer holds no score in [0, 1]
        parse_score(text, [0, 1])
    assert answer["reward"] == 0.0 and _flags(answer) == {"model_grader_parse_error"}


def test_validate_echoes_the_grader(served: tuple[TestClient, Container]) -> None:
    client, _ = served
    for grader in (STRING_CHECK, SIMILARITY, PYTHON, _score_grader()):
        response = _post(client, VALIDATE, {"grader": grader})
        assert response.status_code == 200, response.text
        assert response.json() == {"grader": grader}
        openapi_schemas.validate(response.json(), "ValidateGraderResponse")
    # OpenAI's schema types a multi grader's `graders` as one grader (its guide: a map of names); both pass
    one = {**STRING_CHECK, "name": "label_check"}
    single = {"type": "multi", "name": "one", "graders": one, "calculate_output": "label_check"}
    response = _post(client, VALIDATE, {"grader": single})
    assert response.status_code == 200, response.text
    openapi_schemas.validate(response.json(), "ValidateGraderResponse")
    mapped = {"type": "multi", "name": "map", "graders": {"a": STRING_CHECK}, "calculate_output": "a"}
    assert _post(client, VALIDATE, {"grader": mapped}).status_code == 200


@pytest.mark.parametrize(
    ("grader", "param"),
    [
        ({**STRING_CHECK, "operation": "startswith"}, "grader.operation"),
        ({**STRING_CHECK, "type": "nope"}, "grader.type"),
        ({k: v for k, v in STRING_CHECK.items() if k != "name"}, "grader.name"),
        ({**SIMILARITY, "evaluation_metric": "cosine"}, "grader.evaluation_metric"),  # no embeddings model here
        ({**SIMILARITY, "input": "{{ sample.output_text + 1 }}"}, "grader.input"),
        ({**PYTHON, "source": "def grade(sample, item):\n  return ("}, "grader.source"),
        ({**PYTHON, "source": "x = 1\n" * (MAX_GRADER_BYTES // 12)}, "grader.source"),
        (_score_grader("no-such-model"), "grader.model"),
        (_score_grader(temperature=7), "grader.sampling_params.temperature"),
        (_score_grader(max_completions_tokens=10**9), "grader.sampling_params.max_completions_tokens"),
        (
            {"type": "multi", "name": "m", "graders": {"j": _score_grader("no-such-model")}, "calculate_output": "j"},
            "grader.graders.j.model",
        ),
        (
            {"type": "multi", "name": "m", "graders": {"a": STRING_CHECK}, "calculate_output": "b"},
            "grader.calculate_output",
        ),
        (
            {"type": "multi", "name": "m", "graders": {"a": STRING_CHECK}, "calculate_output": "__import__('os')"},
            "grader.calculate_output",
        ),
        (
            {
                "type": "string_check",
                "name": "big",
                "input": "x" * MAX_GRADER_BYTES,
                "reference": "",
                "operation": "eq",
            },
            "grader",
        ),
    ],
)
def test_invalid_graders_are_a_400_naming_the_field(
    served: tuple[TestClient, Container], grader: dict[str, Any], param: str
) -> None:
    client, _ = served
    _bad(client, VALIDATE, {"grader": grader}, param)
    _bad(client, RUN["openai"], {"grader": grader, "model_sample": "x", "item": {}}, param)


def test_request_limits_and_shapes(served: tuple[TestClient, Container]) -> None:
    client, _ = served
    run = RUN["openai"]
    _bad(client, run, {"grader": STRING_CHECK, "model_sample": "x" * (MAX_MODEL_SAMPLE_CHARS + 1)}, "model_sample")
    big_item = {"label": "x" * MAX_ITEM_BYTES}
    _bad(client, run, {"grader": STRING_CHECK, "model_sample": "x", "item": big_item}, "item")
    _bad(client, run, {"grader": STRING_CHECK}, "model_sample")
    _bad(client, run, {"model_sample": "x"}, "grader")
    _bad(client, run, {"grader": "string_check", "model_sample": "x"}, "grader")
    _bad(client, run, {"grader": STRING_CHECK, "model_sample": "x", "item": ["a"]}, "item")
    _bad(client, VALIDATE, {"grader": []}, "grader")
    _bad(client, VALIDATE, {}, "grader")
    # at the limits, a run is still served
    answer = _run(client, STRING_CHECK, "x" * MAX_MODEL_SAMPLE_CHARS, {"label": "x" * (MAX_ITEM_BYTES - 64)})
    assert answer["reward"] == 0.0 and _flags(answer) == set()


def test_a_judge_is_only_a_model_the_key_may_use(served: tuple[TestClient, Container], tmp_path: Path) -> None:
    client, container = served
    created_a = container.keys.create("graders-a")
    key_a, org_a = created_a.key, created_a.info.org_id
    key_b = container.keys.create("graders-b").key
    params = FineTuningJobCreate.model_validate(
        {"model": TINY_MODEL_NAME, "training_file": _upload(container, org_a, None), "suffix": "judge"}
    )
    model, checkpoint = _succeed(container, container.fine_tuning.create(org_a, params).id, tmp_path / "weights")
    AliasService(container.sessions, container.models).set("graders-a", "house-judge", model)

    for name in (model, checkpoint, "house-judge"):
        assert _post(client, VALIDATE, {"grader": _score_grader(name)}, key_a).status_code == 200
        error = _bad(client, VALIDATE, {"grader": _score_grader(name)}, "grader.model", key_b)
        assert "does not exist or you do not have access to it" in error["message"]
        body = {"grader": _score_grader(name), "model_sample": "x", "item": {"label": "y"}}
        _bad(client, RUN["openai"], body, "grader.model", key_b)
    # a base model is everyone's
    assert _post(client, VALIDATE, {"grader": _score_grader()}, key_b).status_code == 200


def test_in_openapi(served: tuple[TestClient, Container]) -> None:
    client, _ = served
    paths = client.get("/openapi.json").json()["paths"]
    for prefix in ("/v1", "/openai/v1", "/openai"):
        assert "post" in paths[f"{prefix}/fine_tuning/alpha/graders/run"]
        assert "post" in paths[f"{prefix}/fine_tuning/alpha/graders/validate"]


def test_runs_wait_for_a_grading_slot_on_each_event_loop(served: tuple[TestClient, Container]) -> None:
    """With one slot, two python graders of 0.5 s take a second; a second event loop (as an eval run's worker
    starts) gets slots of its own rather than waiting on a limiter bound to the first."""
    _, container = served
    service = GraderService(container.models, container.inference, max_concurrent=1)
    slow = {**PYTHON, "source": "import time\n\ndef grade(sample, item):\n    time.sleep(0.5)\n    return 1.0\n"}
    request = RunGraderRequest(grader=slow, model_sample="x")
    caller = Caller(scope=container.default_org_id, org_id=container.default_org_id)

    async def two() -> float:
        started = time.monotonic()
        answers = await asyncio.gather(service.run(caller, request), service.run(caller, request))
        assert [a.reward for a in answers] == [1.0, 1.0]
        return time.monotonic() - started

    assert asyncio.run(two()) >= 1.0
    # two loops at once, each in its own thread (a limiter shared across loops deadlocks here: daemon threads,
    # so that such a hang fails the test instead of holding the run)
    took: list[float] = []
    threads = [threading.Thread(target=lambda: took.append(asyncio.run(two())), daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(took) == 2 and min(took) >= 1.0
