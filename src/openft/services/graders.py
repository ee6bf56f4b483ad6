"""The Graders API (`/fine_tuning/alpha/graders/run` and `/validate`): `openft.graders` on the wire.

`openft.graders.grade` is synchronous (a python grader waits for its process, text metrics are CPU work), so
it runs in a worker thread, at most `MAX_CONCURRENT_GRADES` at once per event loop: grading never blocks the
event loop, and a burst of python graders cannot start a process per request. A score_model (or label_model) grader's
judge is an openft model: each judge call goes back to the event loop (`anyio.from_thread`) and is served
by `InferenceService.chat` as the caller, so it waits in its model's line like any chat request and can
only ever reach a model the caller's key may use (a name, an alias, a checkpoint; never another
organization's). Every judge model is looked up before grading starts: one the caller cannot use is a 400
naming its field (`grader.model`, `grader.graders.<name>.model`), not a sample error.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Iterator
from typing import Any

import anyio.from_thread
import anyio.to_thread
from anyio.lowlevel import RunVar
from pydantic import ValidationError

from openft.errors import InvalidRequest, ModelNotFound
from openft.graders import Embed, GradeResult, grade, sub_graders, text_sample, validate
from openft.graders.model_graders import sampling_params
from openft.protocol.chat import ChatCompletionRequest
from openft.protocol.graders import (
    MAX_GRADER_BYTES,
    MAX_ITEM_BYTES,
    GraderRunErrors,
    GraderRunMetadata,
    ModelTokenUsage,
    RunGraderRequest,
    RunGraderResponse,
    ValidateGraderRequest,
    ValidateGraderResponse,
)
from openft.services.admission import Disconnected
from openft.services.inference import InferenceService
from openft.services.models import Caller, ModelService, ResolvedModel

MAX_CONCURRENT_GRADES = 4
"""Grader runs in progress at once per event loop (the server's; an eval run's worker has its own); more wait
their turn (a python grader is a process each)."""
JUDGE_TYPES = ("score_model", "label_model")
_SAMPLING = ("temperature", "top_p", "seed", "max_completion_tokens", "max_completions_tokens")


def judges(grader: dict[str, Any], param: str = "grader") -> Iterator[tuple[str, dict[str, Any]]]:
    """Each model grader (score_model, label_model) within a validated grader, with its field: `(param, grader)`."""
    kind = grader.get("type")
    if kind in JUDGE_TYPES:
        yield param, grader
    elif kind == "multi":
        for name, sub in sub_graders(grader, param).items():
            yield from judges(sub, f"{param}.graders.{name}")


def resolve_judges(
    models: ModelService, who: Caller, grader: dict[str, Any], param: str = "grader", *, load: bool
) -> dict[str, ResolvedModel]:
    """Each judge model a validated grader names, as `who` may use it, by the name the grader gives it. One
    the caller cannot use, or (`load`) whose base this server cannot load, or a sampling parameter chat
    refuses, is a 400 naming the grader's field: now, not an error on every sample later."""
    found = {}
    for where, judge in judges(grader, param):
        try:
            found[judge["model"]] = models.resolve(who, judge["model"])
            if load:
                models.target(who, judge["model"])
        except ModelNotFound as exc:
            raise InvalidRequest(f"The grader's judge model: {exc.message}", param=f"{where}.model") from exc
        _judge_request(judge["model"], [], sampling_params(judge), f"{where}.sampling_params", judge)
    return found


def _json_size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass"))


class _JudgeUsage:
    """Tokens each judge model used during one run (judge calls may come from several threads of a multi)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.per_model: dict[str, ModelTokenUsage] = {}
        self.last_model: str | None = None

    def add(self, model: str, prompt_tokens: int, completion_tokens: int) -> None:
        with self._lock:
            usage = self.per_model.setdefault(model, ModelTokenUsage())
            usage.prompt_tokens += prompt_tokens
            usage.completion_tokens += completion_tokens
            usage.total_tokens += prompt_tokens + completion_tokens
            self.last_model = model


class GraderService:
    def __init__(
        self,
        models: ModelService,
        inference: InferenceService,
        max_concurrent: int = MAX_CONCURRENT_GRADES,
        embed: Embed | None = None,
    ):
        """`embed`: text_similarity's `cosine` embeddings (openft.embeddings); None: cosine is a 400."""
        self._models = models
        self._inference = inference
        self._embed = embed
        self._max_concurrent = max_concurrent
        # one limiter per event loop: the server's, and each loop an eval run's worker starts (an anyio limiter
        # belongs to the loop that first waits on it)
        self._limiters: RunVar[anyio.CapacityLimiter] = RunVar("openft_grader_limiter")

    def _limiter(self) -> anyio.CapacityLimiter:
        try:
            return self._limiters.get()
        except LookupError:
            limiter = anyio.CapacityLimiter(self._max_concurrent)
            self._limiters.set(limiter)
            return limiter

    # validate -----------------------------------------------------------------------------------------
    def _check(self, who: Caller, grader: dict[str, Any], *, load: bool) -> None:
        """Everything that makes a grader unusable by this caller, as a 400 naming the field: its size, its
        shape (`openft.graders.validate`), and each judge model (`load`: also that its base can be loaded,
        as a run needs; a validation only looks the name up)."""
        if _json_size(grader) > MAX_GRADER_BYTES:
            raise InvalidRequest(
                f"The grader is larger than {MAX_GRADER_BYTES // 1024} KiB as JSON, the limit on this server.",
                param="grader",
            )
        validate(grader, embed=self._embed)
        resolve_judges(self._models, who, grader, load=load)

    async def validate(self, who: Caller, request: ValidateGraderRequest) -> ValidateGraderResponse:
        await anyio.to_thread.run_sync(functools.partial(self._check, who, request.grader, load=False))
        return ValidateGraderResponse(grader=request.grader)

    # run ----------------------------------------------------------------------------------------------
    async def run(
        self, who: Caller, request: RunGraderRequest, disconnected: Disconnected | None = None
    ) -> RunGraderResponse:
        sample, item = await anyio.to_thread.run_sync(self._prepare, who, request)
        usage = _JudgeUsage()

        def judge(model: str, messages: list[dict[str, Any]], params: dict[str, Any]) -> str:
            """Runs in the grading thread; the chat itself is served on the event loop, as the caller."""
            chat = _judge_request(model, messages, params)
            completion = anyio.from_thread.run(self._inference.chat, who, chat, disconnected)
            usage.add(model, completion.usage.prompt_tokens, completion.usage.completion_tokens)
            return completion.choices[0].message.content or ""

        result = await anyio.to_thread.run_sync(
            functools.partial(grade, request.grader, sample, item, judge, embed=self._embed), limiter=self._limiter()
        )
        return _response(request.grader, result, usage)

    def _prepare(self, who: Caller, request: RunGraderRequest) -> tuple[dict[str, Any], dict[str, Any]]:
        """The run's checks (`model_sample`'s length is the request model's) and its `sample` and `item`;
        in a thread, since sizing and parsing a large item or sample is CPU work."""
        item = request.item or {}
        if _json_size(item) > MAX_ITEM_BYTES:
            raise InvalidRequest(
                f"item is larger than {MAX_ITEM_BYTES // 1024} KiB as JSON, the limit on this server.", param="item"
            )
        self._check(who, request.grader, load=True)
        return text_sample(request.model_sample), item


def _judge_request(
    model: str,
    messages: list[dict[str, Any]],
    params: dict[str, Any],
    param: str = "grader.sampling_params",
    grader: dict[str, Any] | None = None,
) -> ChatCompletionRequest:
    """The chat request that asks the judge, from the sampling params `openft.graders` passes (temperature,
    top_p, seed, max_completion_tokens). A value chat refuses is a 400 naming the grader's field (as the
    grader spells it: OpenAI's schema says `max_completions_tokens`)."""
    body = {"model": model, "messages": messages or [{"role": "user", "content": ""}], **params}
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first.get("loc") else ""
        given = (grader or {}).get("sampling_params") or {}
        if name == "max_completion_tokens" and "max_completion_tokens" not in given:
            name = "max_completions_tokens"
        raise InvalidRequest(
            f"The judge cannot be asked with this sampling parameter: {first.get('msg', 'invalid value')}.",
            param=f"{param}.{name}" if name in _SAMPLING else param,
        ) from exc


def _response(grader: dict[str, Any], result: GradeResult, usage: _JudgeUsage) -> RunGraderResponse:
    total = sum(u.total_tokens for u in usage.per_model.values()) if usage.per_model else None
    return RunGraderResponse(
        reward=result.reward,
        metadata=GraderRunMetadata(
            name=str(grader.get("name", "")),
            type=str(grader.get("type", "")),
            errors=GraderRunErrors.model_validate(result.metadata_errors()),
            execution_time=result.execution_time,
            scores={},
            token_usage=total,
            sampled_model_name=usage.last_model,
        ),
        sub_rewards=dict(result.sub_rewards),
        model_grader_token_usage_per_model=usage.per_model,
    )
