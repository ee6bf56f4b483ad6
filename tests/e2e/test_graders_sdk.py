"""The Graders API through the official SDK (`client.fine_tuning.alpha.graders.run` / `.validate`) on a real
server: string_check, text_similarity, python, multi, and score_model judged by the served tiny model; the
answers as OpenAI's `RunGraderResponse` / `ValidateGraderResponse` schemas have them; bad graders as the
SDK's BadRequestError naming the field; another organization's alias is no judge."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from tests.conftest import TINY_MODEL_NAME
from tests.e2e.conftest import DIALECTS
from tests.e2e.test_model_names import _cli
from tests.e2e.test_tenancy import keys_cli, sdk
from tests.support import openapi_schemas
from tests.support.server import RunningServer

pytestmark = pytest.mark.e2e

STRING_CHECK: dict[str, Any] = {
    "type": "string_check",
    "name": "exact",
    "input": "{{sample.output_text}}",
    "reference": "{{item.label}}",
    "operation": "eq",
}
SIMILARITY: dict[str, Any] = {
    "type": "text_similarity",
    "name": "close",
    "input": "{{sample.output_text}}",
    "reference": "{{item.label}}",
    "evaluation_metric": "bleu",
}
PYTHON: dict[str, Any] = {
    "type": "python",
    "name": "length",
    "source": "def grade(sample, item):\n    return min(1.0, len(sample['output_text']) / item['length'])\n",
}
JUDGE: dict[str, Any] = {
    "type": "score_model",
    "name": "judge",
    "model": TINY_MODEL_NAME,
    "input": [
        {
            "role": "user",
            "content": [
                {
                    "type": "input_text",
                    "text": "Score 0 to 1, number only.\nReference: {{item.label}}\nAnswer: {{sample.output_text}}",
                }
            ],
        }
    ],
    "sampling_params": {"temperature": 0, "max_completions_tokens": 5},
}


def _run(client: OpenAI, grader: dict[str, Any], sample: str, item: dict[str, Any]) -> Any:
    """The SDK's parsed answer, after the wire JSON was checked against OpenAI's schema."""
    raw = client.fine_tuning.alpha.graders.with_raw_response.run(
        grader=grader,  # type: ignore[arg-type]
        model_sample=sample,
        item=item,
    )
    openapi_schemas.validate(raw.http_response.json(), "RunGraderResponse")
    return raw.parse()


def test_every_grader_type(client: OpenAI) -> None:
    item = {"label": "the cat sat on the mat", "length": 44}
    exact = _run(client, STRING_CHECK, "the cat sat on the mat", item)
    assert exact.reward == 1.0 and exact.metadata.type == "string_check" and exact.metadata.name == "exact"
    assert not exact.metadata.errors.other_error and exact.metadata.token_usage is None

    similar = _run(client, SIMILARITY, "the cat sat on a mat", item)
    assert 0.0 < similar.reward < 1.0

    length = _run(client, PYTHON, "x" * 11, item)
    assert length.reward == pytest.approx(0.25) and not length.metadata.errors.python_grader_runtime_error

    multi = {
        "type": "multi",
        "name": "mixed",
        "graders": {"exact": STRING_CHECK, "close": SIMILARITY, "length": PYTHON},
        "calculate_output": "(exact + close + length) / 3",
    }
    mixed = _run(client, multi, "the cat sat on the mat", item)
    assert mixed.sub_rewards == {"exact": 1.0, "close": 1.0, "length": pytest.approx(0.5)}
    assert mixed.reward == pytest.approx(2.5 / 3)


def test_score_model_with_an_openft_judge(client: OpenAI) -> None:
    """The tiny model is random (its 'score' is noise): the answer's shape, and that its greedy answer, which
    holds no number in range, is reward 0 with `model_grader_parse_error`."""
    judged = _run(client, JUDGE, "the cat sat", {"label": "the cat sat"})
    assert judged.metadata.sampled_model_name == TINY_MODEL_NAME
    assert judged.metadata.token_usage and judged.metadata.token_usage > 5
    usage = judged.model_grader_token_usage_per_model[TINY_MODEL_NAME]
    assert usage["total_tokens"] == judged.metadata.token_usage and 0 < usage["completion_tokens"] <= 5
    assert judged.reward == 0.0 and judged.metadata.errors.model_grader_parse_error
    assert not judged.metadata.errors.model_grader_server_error

    # in a multi grader, beside a grader that scores
    multi = {
        "type": "multi",
        "name": "m",
        "graders": {"judge": JUDGE, "exact": STRING_CHECK},
        "calculate_output": "exact",
    }
    both = _run(client, multi, "the cat sat", {"label": "the cat sat"})
    assert both.sub_rewards == {"judge": 0.0, "exact": 1.0}
    assert both.reward == 0.0 and both.metadata.errors.model_grader_parse_error  # any failure fails the whole


def test_validate(client: OpenAI) -> None:
    for grader in (STRING_CHECK, SIMILARITY, PYTHON, JUDGE):
        raw = client.fine_tuning.alpha.graders.with_raw_response.validate(grader=grader)  # type: ignore[arg-type]
        assert raw.http_response.json() == {"grader": grader}
        openapi_schemas.validate(raw.http_response.json(), "ValidateGraderResponse")
        assert raw.parse().grader is not None


@pytest.mark.parametrize("dialect", [d for d in DIALECTS if d != "openai"])
def test_other_dialects(client_for: Callable[[str], OpenAI], dialect: str) -> None:
    client = client_for(dialect)
    assert _run(client, STRING_CHECK, "a", {"label": "a"}).reward == 1.0
    assert client.fine_tuning.alpha.graders.validate(grader=STRING_CHECK).grader is not None  # type: ignore[arg-type]


def test_errors(server: RunningServer, client: OpenAI, models_dir: Path) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({**STRING_CHECK, "operation": "contains"}, "grader.operation"),
        ({**PYTHON, "source": "import os\n"}, "grader.source"),  # no grade() to call
        ({**JUDGE, "model": "gpt-4o"}, "grader.model"),
    ]
    graders = client.fine_tuning.alpha.graders
    for grader, param in cases:
        with pytest.raises(openai.BadRequestError) as bad:
            graders.validate(grader=grader)  # type: ignore[arg-type]
        assert bad.value.body["param"] == param, bad.value.body  # type: ignore[index]
        with pytest.raises(openai.BadRequestError) as bad:
            graders.run(grader=grader, model_sample="x")  # type: ignore[arg-type]
        assert bad.value.body["param"] == param, bad.value.body  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as bad:
        client.fine_tuning.alpha.graders.run(grader=STRING_CHECK, model_sample="x" * 70_000)  # type: ignore[arg-type]
    assert bad.value.body["param"] == "model_sample"  # type: ignore[index]

    # an alias is its organization's: another organization's key cannot judge with it
    keys_cli(server, "create", "--org", "graders-owner")
    done = _cli(server, models_dir, "aliases", "set", "house-judge", TINY_MODEL_NAME, "--org", "graders-owner")
    assert done["name"] == "house-judge"
    other = sdk(server, keys_cli(server, "create", "--org", "graders-other")["key"])
    with pytest.raises(openai.BadRequestError) as bad:
        other.fine_tuning.alpha.graders.run(grader={**JUDGE, "model": "house-judge"}, model_sample="x")  # type: ignore[arg-type]
    assert bad.value.body["param"] == "grader.model"  # type: ignore[index]
    assert "Traceback" not in server.log()


def test_a_slow_grader_does_not_hold_the_server(server: RunningServer, client: OpenAI) -> None:
    """Grading runs in a worker thread: while a python grader takes 3 s, the server answers at once."""
    slow = {
        "type": "python",
        "name": "slow",
        "source": "import time\n\ndef grade(sample, item):\n    time.sleep(3)\n    return 1.0\n",
    }
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        running = pool.submit(_run, client, slow, "x", {})
        time.sleep(0.5)
        assert not running.done()
        answered = time.monotonic()
        assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200
        assert _run(client, STRING_CHECK, "a", {"label": "a"}).reward == 1.0
        assert time.monotonic() - answered < 1.5
        assert running.result(timeout=30).reward == 1.0
        assert time.monotonic() - started >= 3
