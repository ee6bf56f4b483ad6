"""`VllmEngine`: the `InferenceEngine` API served by vLLM on a GPU (optional: `pip install openft[vllm]`).

vLLM does the forward passes, batching, paged KV cache and LoRA swapping; openft keeps everything that
decides what a reply *means*, so a request behaves as on the own engine:

- the prompt is openft's own rendering (`openft.inference.engine`'s plan builders: chat template, tools,
  context check, forced tool-call opening), passed to vLLM as token ids;
- vLLM only picks tokens; each choice's ids are fed to a `ChoiceState` (decoding.py), which decodes the text,
  cuts stop strings, parses tool calls, checks the JSON prefix and produces the deltas. Stop strings are never
  given to vLLM, so where a reply is cut and what a stream holds back are exactly the own engine's.

One vLLM engine per weights folder (a base, or a full fine-tune / checkpoint with full weights), created on
first use with LoRA enabled; a LoRA fine-tune is a `LoRARequest` on its base's engine, named by a stable id
per adapter folder (vLLM loads it on first use and keeps it in its LRU cache). All vLLM calls run on one
private asyncio loop in a background thread: the HTTP layer's threads and loops only read `GenerationStream`s.

vLLM is imported lazily (`load_vllm_api`), so this module imports on a machine without it; tests pass a fake
`VllmApi` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import json
import threading
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from transformers import AutoConfig, AutoTokenizer, GenerationConfig

from openft.errors import InvalidRequest, ModelNotFound
from openft.inference.decoding import ChoiceState, DecodePlan
from openft.inference.engine import chat_plan, completion_plan, forced_call_opening, tool_settings
from openft.inference.registry import ActiveModel, context_length_of, stop_token_ids, tokenizer_folder
from openft.inference.stream import GenerationStream, StreamChannel, call_soon, read_all
from openft.inference.tokens import TokenVocabulary
from openft.inference.types import GenerationParams, GenerationResult, ModelTarget, TokenLogprob, TopLogprob

T = TypeVar("T")

LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
"""The `max_lora_rank` values vLLM accepts (it allocates LoRA slots of that rank)."""
DEFAULT_MAX_LORA_RANK = 64
VLLM_MISSING = "The vLLM inference engine needs vLLM, which is not installed: pip install 'openft[vllm]'"


class AsyncEngineLike(Protocol):
    """What is used of vLLM's `AsyncLLM` (`AsyncLLMEngine` in older releases)."""

    def generate(
        self, prompt: Any, sampling_params: Any, request_id: str, *, lora_request: Any = None
    ) -> AsyncIterator[Any]: ...

    async def abort(self, request_id: str) -> None: ...

    def shutdown(self) -> None: ...


@dataclass(frozen=True)
class VllmApi:
    """The few vLLM entry points openft uses, looked up once (see `load_vllm_api`); tests build a fake one."""

    create_engine: Callable[[dict[str, Any]], AsyncEngineLike]
    """Engine arguments (`AsyncEngineArgs` fields) → a started async engine. Blocking: loads the weights."""
    sampling_params: Callable[..., Any]
    """`SamplingParams(**kwargs)`."""
    lora_request: Callable[..., Any]
    """`LoRARequest(lora_name=…, lora_int_id=…, lora_path=…)`."""
    structured_field: str | None = None
    """The `SamplingParams` field of structured outputs: "structured_outputs" (vLLM ≥ 0.10.2) or
    "guided_decoding" (older); None: this vLLM cannot constrain output."""
    structured_params: Callable[..., Any] | None = None
    """`StructuredOutputsParams` / `GuidedDecodingParams` (`json_object=True` or `json=<schema>`)."""
    delta_output_kind: Any = None
    """`RequestOutputKind.DELTA`: each output holds only the new tokens. None: outputs are cumulative."""
    engine_arg_names: frozenset[str] = frozenset()
    """The engine arguments this vLLM knows (options it lacks are left out, e.g. `logprobs_mode`)."""


def load_vllm_api() -> VllmApi:
    """Import vLLM and find its API; raises RuntimeError (with the install command) when it is missing.

    Through `importlib`, so type checking needs no vLLM (it is never installed where openft is developed).
    """
    try:
        vllm = importlib.import_module("vllm")
        lora = importlib.import_module("vllm.lora.request")
        sampling = importlib.import_module("vllm.sampling_params")
    except ImportError as exc:  # the message names the extra: that is what an operator has to do
        raise RuntimeError(VLLM_MISSING) from exc
    engine_args = vllm.AsyncEngineArgs
    engine_class = vllm.AsyncLLMEngine  # an alias of the V1 `AsyncLLM` in the releases openft supports

    def create_engine(kwargs: dict[str, Any]) -> AsyncEngineLike:
        engine: AsyncEngineLike = engine_class.from_engine_args(engine_args(**kwargs))
        return engine

    structured_field, structured_params = None, None
    if hasattr(sampling, "StructuredOutputsParams"):  # vLLM >= 0.10.2
        structured_field, structured_params = "structured_outputs", sampling.StructuredOutputsParams
    elif hasattr(sampling, "GuidedDecodingParams"):
        structured_field, structured_params = "guided_decoding", sampling.GuidedDecodingParams
    output_kind = getattr(sampling, "RequestOutputKind", None)
    return VllmApi(
        create_engine=create_engine,
        sampling_params=vllm.SamplingParams,
        lora_request=lora.LoRARequest,
        structured_field=structured_field,
        structured_params=structured_params,
        delta_output_kind=getattr(output_kind, "DELTA", None),
        engine_arg_names=frozenset(f.name for f in dataclasses.fields(engine_args)),
    )


@dataclass
class _Model:
    """One vLLM engine (one weights folder); touched only on the private loop."""

    key: Path
    full_model: bool
    tokenizer_path: Path
    lora_rank: int
    ready: asyncio.Future[AsyncEngineLike]
    engine: AsyncEngineLike | None = None
    active: int = 0
    """Requests holding it: it is never shut down under them."""
    loras: set[int] = field(default_factory=set)


@dataclass(eq=False)  # kept in a set: hashed by identity
class _Job:
    """One request on its way through vLLM."""

    key: Path
    channel: StreamChannel
    plan: DecodePlan
    choices: list[ChoiceState]
    vocab: TokenVocabulary
    tokenizer_lock: threading.Lock
    """The model's tokenizer is shared with callers rendering prompts, and fast tokenizers are not thread-safe."""
    sampling_params: Any
    lora: tuple[int, Path] | None
    lora_rank: int
    replicate: bool
    """Greedy with n > 1: vLLM refuses it, so one sequence is generated and fed to every choice (as the own
    engine's greedy rows are all the same)."""
    full_model: bool
    tokenizer_path: Path
    task: asyncio.Task[None] | None = None
    admitted: bool = False
    ending: bool = False
    cancel_sent: bool = False

    @property
    def completion_tokens(self) -> int:
        return sum(choice.generated for choice in self.choices)


class VllmEngine:
    """`InferenceEngine`'s public API (chat, completions, streams, unload, stats) on vLLM.

    Differences from the own engine, all inherent to vLLM:

    - `TokenLogprob`s are vLLM's "raw_logprobs" (`logprobs_mode`, set when the installed vLLM has it): the
      log-softmax of the model's logits before any processing. OpenAI's (and the own engine's) are after
      presence/frequency penalties and before temperature/top_p; vLLM offers no mode in between ("processed"
      is after temperature and top_p too), so the two agree except when a penalty is set, where vLLM's are
      those of the unpenalized distribution. Like the own engine's, they ignore the JSON constraint.
    - json_object and forced tool calls use vLLM's structured outputs (a grammar, not openft's
      candidate-token search). A forced call is generated whole under a JSON schema whose `name` is one of
      the allowed functions (openft's forced opening leaves the name to the model for "required" with
      several tools; here the schema guarantees one of them). Every token is still checked by openft's JSON
      prefix rule (e.g. at most 32 blanks in a row): one the grammar allowed but the rule refuses ends the
      choice with finish_reason "length", as the own engine does when no token fits.
    - Sampling with a seed is reproducible on vLLM, but gives other text than the own engine's sampler.
    - `org` is accepted for the API's sake; vLLM schedules first come, first served.

    `stats()` counts engines and LoRA adapters; GPU memory is vLLM's own (`gpu_memory_utilization`), so the
    byte counts are 0.
    """

    def __init__(
        self,
        *,
        max_loras: int = 8,
        max_lora_rank: int | None = None,
        max_models: int = 1,
        gpu_memory_utilization: float = 0.9,
        engine_options: dict[str, Any] | None = None,
        api: VllmApi | Callable[[], VllmApi] = load_vllm_api,
    ):
        """`max_loras`: adapters in one vLLM batch (vLLM keeps more in host memory and swaps them in).

        `max_lora_rank`: the largest LoRA rank an engine is created for; None: `DEFAULT_MAX_LORA_RANK` (64), or
        the rank of the adapter whose request creates the engine when that is larger (vLLM fixes it per
        engine: a later adapter above it is refused with a message naming this setting).

        `max_models`: vLLM engines alive at once; each gets `gpu_memory_utilization / max_models` of the GPU
        (vLLM preallocates that fraction for weights and KV cache). A request for another model shuts the
        least recently used idle engine down first, or waits for one to become idle.

        `engine_options`: more `AsyncEngineArgs` (e.g. tensor_parallel_size), applied last.

        `api`: the vLLM entry points, or a function giving them (called here, so a missing vLLM fails at
        startup, not at the first request).
        """
        if max_loras < 1:
            raise ValueError("max_loras must be at least 1")
        if max_models < 1:
            raise ValueError("max_models must be at least 1")
        if not 0 < gpu_memory_utilization <= 1:
            raise ValueError("gpu_memory_utilization must be in (0, 1]")
        self._api = api if isinstance(api, VllmApi) else api()
        self._max_loras = max_loras
        self._max_lora_rank = max_lora_rank
        self._max_models = max_models
        self._gpu_share = gpu_memory_utilization / max_models
        self._engine_options = dict(engine_options or {})
        self._lock = threading.Lock()  # guards the dicts below, read and written from callers' threads
        self._tokenizing: dict[Path, ActiveModel] = {}  # per weights folder; `model` is None (vLLM has it)
        self._lora_ids: dict[Path, int] = {}
        self._waiting: dict[Path, int] = {}
        self._models_evicted = 0
        self._closed = False
        # Loop-thread state: only touched by coroutines on `self._loop`.
        self._models: OrderedDict[Path, _Model] = OrderedDict()  # least recently used first
        self._jobs: set[_Job] = set()
        self._starting: set[asyncio.Task[None]] = set()
        self._loop = asyncio.new_event_loop()
        self._changed: asyncio.Condition | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="openft-vllm", daemon=True)
        self._thread.start()

    # The public API (as InferenceEngine's) ------------------------------------------------------------

    def chat(
        self,
        target: ModelTarget,
        messages: list[dict[str, Any]],
        params: GenerationParams,
        tools: list[dict[str, Any]] | None = None,
        *,
        org: str | None = None,
    ) -> GenerationResult:
        """Like `InferenceEngine.chat`: the stream's deltas, put together (so both agree by construction)."""
        return read_all(self.stream_chat(target, messages, params, tools, org=org), params)

    def stream_chat(
        self,
        target: ModelTarget,
        messages: list[dict[str, Any]],
        params: GenerationParams,
        tools: list[dict[str, Any]] | None = None,
        *,
        org: str | None = None,
    ) -> GenerationStream:
        """Like `InferenceEngine.stream_chat`; request errors raise here, before a stream is returned."""
        settings = tool_settings(params, tools)  # checked before anything is loaded, as the own engine does
        own_plan = chat_plan(messages, params, tools)
        if not settings.forced:
            return self._submit(target, own_plan, _response_format(params))
        names = [settings.forced_name] if settings.forced_name is not None else sorted(settings.names or ())

        def plan(active: ActiveModel) -> DecodePlan:
            # The call's JSON object is generated whole under a schema; only the tag before it (if any) is forced.
            tokenizer = active.tokenizer
            opening, json_from = forced_call_opening(str(tokenizer.chat_template or ""), settings.forced_name)
            tag = opening[:json_from]
            tag_ids = list(tokenizer(tag, add_special_tokens=False)["input_ids"]) if tag else []
            return dataclasses.replace(own_plan(active), forced_ids=tag_ids)

        return self._submit(target, plan, ("tool_choice", {"json": _call_schema(names)}))

    def complete(
        self,
        target: ModelTarget,
        prompt: str | list[int],
        params: GenerationParams,
        *,
        echo: bool = False,
        org: str | None = None,
    ) -> GenerationResult:
        """Like `InferenceEngine.complete`."""
        return read_all(self.stream_complete(target, prompt, params, echo=echo, org=org), params)

    def stream_complete(
        self,
        target: ModelTarget,
        prompt: str | list[int],
        params: GenerationParams,
        *,
        echo: bool = False,
        org: str | None = None,
    ) -> GenerationStream:
        """Like `InferenceEngine.stream_complete`."""
        return self._submit(target, completion_plan(prompt, params, echo), _response_format(params))

    def context_length(self, target: ModelTarget) -> int | None:
        """The target's context window in tokens, read from its config; None when the config has none."""
        return context_length_of(AutoConfig.from_pretrained(target.weights_path))

    def waiting(self, target: ModelTarget) -> int:
        """Requests for the target's weights not yet admitted: waiting for their engine to start, or in vLLM's
        queue before their first token."""
        with self._lock:
            return self._waiting.get(target.weights_path.resolve(), 0)

    def unload(self, path: Path) -> bool:
        """Shut down the engine of the model at `path` (after the requests using it), or drop the LoRA adapter
        at `path` from every engine that loaded it; False when neither was loaded."""
        key = path.resolve()
        with self._lock:
            self._tokenizing.pop(key, None)  # its folder may be replaced: read the tokenizer again next time
        return self._call(self._unload(key))

    def stats(self) -> dict[str, int]:
        """The keys of `InferenceEngine.stats`; GPU memory is vLLM's, so the byte counts are 0."""
        models = self._call(self._snapshot())
        return {
            "bases_loaded": sum(not full for full, _ in models),
            "full_models_loaded": sum(full for full, _ in models),
            "adapters_loaded": sum(loras for _, loras in models),
            "adapter_bytes": 0,
            "model_bytes": 0,
            "memory_bytes": 0,
            "models_evicted": self._models_evicted,
        }

    def close(self) -> None:
        """Cancel every request, shut every engine down and stop the loop (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        with contextlib.suppress(RuntimeError):
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    # Request preparation (caller's thread) ------------------------------------------------------------

    def _tokenizing_for(self, target: ModelTarget) -> ActiveModel:
        """What the plan builders need of the target (tokenizer, context length, stop ids, vocabulary), loaded
        once per weights folder from its files: the weights themselves are vLLM's."""
        if not (target.weights_path / "config.json").is_file():
            raise ModelNotFound("The model's weights are missing on this server.", param="model")
        if target.adapter_path is not None and not (target.adapter_path / "adapter_config.json").is_file():
            raise ModelNotFound("The model's adapter is missing on this server.", param="model")
        key = target.weights_path.resolve()
        with self._lock:
            found = self._tokenizing.get(key)
        if found is not None:
            return found
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder(target), trust_remote_code=False)
        config = AutoConfig.from_pretrained(target.weights_path)
        active = ActiveModel(
            model=None,
            tokenizer=tokenizer,
            context_length=context_length_of(config),
            stop_token_ids=stop_token_ids(_generation_config(target.weights_path, config), tokenizer),
            vocab=TokenVocabulary(tokenizer),
            tokenizer_lock=threading.Lock(),
        )
        with self._lock:
            return self._tokenizing.setdefault(key, active)

    def _submit(
        self,
        target: ModelTarget,
        plan_for: Callable[[ActiveModel], DecodePlan],
        structured: tuple[str, dict[str, Any]] | None,
    ) -> GenerationStream:
        """Settle the whole request here (so bad input raises before a stream exists) and hand it to the loop.

        `structured`: (the request parameter it comes from, the structured-outputs options) or None."""
        active = self._tokenizing_for(target)
        with active.tokenizer_lock:
            plan = plan_for(active)
            choices = [ChoiceState(i, plan, active.tokenizer, active.vocab) for i in range(plan.params.n)]
        params = plan.params
        api = self._api
        kwargs: dict[str, Any] = {
            "n": params.n,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "seed": params.seed,
            "presence_penalty": params.presence_penalty,
            "frequency_penalty": params.frequency_penalty,
            "max_tokens": max(1, plan.max_new_tokens - len(plan.forced_ids)),
            "logprobs": params.top_logprobs if params.logprobs else None,
            "stop_token_ids": sorted(plan.stop_token_ids),
            "detokenize": False,  # openft decodes (ChoiceState): vLLM's text would be thrown away
        }
        replicate = params.temperature == 0 and params.n > 1
        if replicate:
            kwargs["n"] = 1
        if api.delta_output_kind is not None:
            kwargs["output_kind"] = api.delta_output_kind
        if structured is not None:
            param, options = structured
            if api.structured_field is None or api.structured_params is None:
                what = "response_format json_object/json_schema" if param == "response_format" else "a forced tool call"
                raise InvalidRequest(
                    f"The installed vLLM cannot constrain output, so {what} is not available on this server.",
                    param=param,
                )
            kwargs[api.structured_field] = api.structured_params(**options)
        lora = None
        lora_rank = 0
        if target.adapter_path is not None:
            adapter = target.adapter_path.resolve()
            lora_rank = _adapter_rank(adapter)
            with self._lock:
                lora = (self._lora_ids.setdefault(adapter, len(self._lora_ids) + 1), adapter)
        channel = StreamChannel()
        key = target.weights_path.resolve()
        job = _Job(
            key=key,
            channel=channel,
            plan=plan,
            choices=choices,
            vocab=active.vocab,
            tokenizer_lock=active.tokenizer_lock,
            sampling_params=api.sampling_params(**kwargs),
            lora=lora,
            lora_rank=lora_rank,
            replicate=replicate,
            full_model=target.full_model_path is not None,
            tokenizer_path=tokenizer_folder(target),
        )
        with self._lock:
            if self._closed:
                raise RuntimeError("The vLLM engine is closed.")
            self._waiting[key] = self._waiting.get(key, 0) + 1
        self._loop.call_soon_threadsafe(self._start_job, job)
        return GenerationStream(channel, len(plan.prompt_ids))

    # On the private loop ------------------------------------------------------------------------------

    def _start_job(self, job: _Job) -> None:
        job.task = self._loop.create_task(self._produce(job))
        self._jobs.add(job)
        job.channel.on_cancel(lambda: call_soon(self._loop, self._cancel_job, job))

    def _cancel_job(self, job: _Job) -> None:
        """The reader left: interrupt the producer once (never while it is giving things back)."""
        if not job.ending and not job.cancel_sent and job.task is not None:
            job.cancel_sent = True
            job.task.cancel()

    def _admit(self, job: _Job) -> None:
        if not job.admitted:
            job.admitted = True
            with self._lock:
                self._waiting[job.key] -= 1
            job.channel.admit()
            for choice in job.choices:
                if (opening := choice.opening()) is not None:
                    job.channel.put(opening, job.completion_tokens)

    async def _produce(self, job: _Job) -> None:
        """Run one request on vLLM and put its deltas on the channel; always ends the channel.

        The channel is admitted at vLLM's first output, not at submission: until then the request may sit
        in vLLM's queue (that is what `waiting` counts), and vLLM's refusals (a prompt or LoRA it cannot take)
        come before it, so they still reach the API as a failed start.
        """
        channel, error = job.channel, None
        model: _Model | None = None
        request_id = f"openft-{uuid.uuid4().hex}"
        submitted = finished = False
        try:
            model = await self._acquire(job)
            engine = model.engine
            assert engine is not None
            if job.lora is not None:
                model.loras.add(job.lora[0])
            if job.plan.max_new_tokens - len(job.plan.forced_ids) <= 0:  # the forced opening used all the room
                self._admit(job)
                for choice in job.choices:
                    self._finish(job, choice, "length")
                return
            prompt = {"prompt_token_ids": [*job.plan.prompt_ids, *job.plan.forced_ids]}
            lora_request = None
            if job.lora is not None:
                lora_id, path = job.lora
                lora_request = self._api.lora_request(
                    lora_name=f"openft-lora-{lora_id}", lora_int_id=lora_id, lora_path=str(path)
                )
            outputs = engine.generate(prompt, job.sampling_params, request_id, lora_request=lora_request)
            submitted = True
            try:
                async for output in outputs:
                    self._admit(job)
                    with job.tokenizer_lock:
                        for completion in output.outputs:
                            self._feed(job, completion)
                    if all(choice.done for choice in job.choices):
                        finished = bool(getattr(output, "finished", False))
                        break
                    if getattr(output, "finished", False):
                        finished = True
                        break
            finally:
                with contextlib.suppress(Exception):
                    await outputs.aclose()  # type: ignore[attr-defined]
            if not all(choice.done for choice in job.choices):
                raise RuntimeError("vLLM ended the request before every choice finished.")
        except asyncio.CancelledError:
            pass  # the reader left: `end` below records the cancellation
        except Exception as exc:
            error = exc
        finally:
            job.ending = True
            if submitted and not finished and model is not None and model.engine is not None:
                with contextlib.suppress(Exception):
                    await model.engine.abort(request_id)
            if model is not None:
                model.active -= 1
                await self._notify()
            if not job.admitted:
                with self._lock:
                    self._waiting[job.key] -= 1
            channel.end(job.completion_tokens, error)
            self._jobs.discard(job)

    def _feed(self, job: _Job, completion: Any) -> None:
        """Feed one vLLM `CompletionOutput` (the new tokens of one sequence) to its choice(s)."""
        targets = job.choices if job.replicate else [job.choices[completion.index]]
        token_ids = list(completion.token_ids)
        logprobs = completion.logprobs if job.plan.params.logprobs else None
        wanted = job.plan.params.top_logprobs
        if logprobs is not None and len(logprobs) != len(token_ids):
            raise RuntimeError("vLLM returned logprobs for a different number of tokens than it generated.")
        for choice in targets:
            if choice.done:
                continue  # a stop string or a closed JSON object ended it: vLLM's later tokens are not part of it
            for position, token_id in enumerate(token_ids):
                if choice.json is not None and not choice.acceptable(token_id):
                    choice.finish("length")  # the grammar allowed what openft's JSON rule does not: stop there
                    break
                entry = None if logprobs is None else _token_logprob(token_id, logprobs[position], wanted, job.vocab)
                choice.add(token_id, entry)
                if choice.done:
                    break
            reason = getattr(completion, "finish_reason", None)
            if not choice.done and reason is not None:
                if reason == "abort":
                    raise RuntimeError("vLLM aborted the request.")
                choice.finish("length" if reason == "length" else "stop")
            if (delta := choice.delta()) is not None:
                job.channel.put(delta, job.completion_tokens)

    def _finish(self, job: _Job, choice: ChoiceState, reason: Any) -> None:
        choice.finish(reason)
        if (delta := choice.delta()) is not None:
            job.channel.put(delta, job.completion_tokens)

    async def _acquire(self, job: _Job) -> _Model:
        """The job's engine, started (and room made for it) if needed; the caller holds it until it ends."""
        while True:
            model = self._models.get(job.key)
            if model is None:
                if len(self._models) >= self._max_models:
                    victim = next((m for m in self._models.values() if m.active == 0 and m.engine is not None), None)
                    if victim is None:
                        await self._wait_for_change()  # every engine is busy (or starting): wait for one to idle
                        continue
                    self._models_evicted += 1
                    await self._shutdown(victim)
                    continue
                model = self._create(job)
            self._models.move_to_end(job.key)
            model.active += 1
            try:
                await asyncio.shield(model.ready)
            except BaseException:
                model.active -= 1
                raise
            if job.lora is not None and job.lora_rank > model.lora_rank:
                model.active -= 1
                raise InvalidRequest(
                    f"This fine-tune's LoRA rank ({job.lora_rank}) is above the largest rank ({model.lora_rank}) "
                    "its base model's vLLM engine was started with: raise the server's vLLM max_lora_rank setting.",
                    param="model",
                )
            return model

    def _create(self, job: _Job) -> _Model:
        rank = self._max_lora_rank or max(DEFAULT_MAX_LORA_RANK, _round_rank(job.lora_rank))
        options: dict[str, Any] = {
            "model": str(job.key),
            "tokenizer": str(job.tokenizer_path),
            "dtype": "bfloat16",
            "enable_lora": True,
            "max_loras": self._max_loras,
            "max_lora_rank": rank,
            "gpu_memory_utilization": self._gpu_share,
            "trust_remote_code": False,
            "logprobs_mode": "raw_logprobs",
            "max_logprobs": 20,
        }
        names = self._api.engine_arg_names
        if names:
            options = {name: value for name, value in options.items() if name in names}
        options.update(self._engine_options)
        loop = self._loop
        ready: asyncio.Future[AsyncEngineLike] = loop.create_future()
        model = _Model(job.key, job.full_model, job.tokenizer_path, rank, ready)
        self._models[job.key] = model

        async def start() -> None:
            try:
                engine = await loop.run_in_executor(None, self._api.create_engine, options)
            except Exception as exc:
                if self._models.get(job.key) is model:
                    del self._models[job.key]  # the next request tries again
                ready.set_exception(exc)
                await self._notify()
                return
            model.engine = engine
            ready.set_result(engine)

        task = loop.create_task(start())
        self._starting.add(task)  # asyncio keeps only a weak reference to a task
        task.add_done_callback(self._starting.discard)
        ready.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved: no "never retrieved" log
        return model

    async def _shutdown(self, model: _Model) -> None:
        if self._models.get(model.key) is model:
            del self._models[model.key]
        if model.engine is not None:
            await self._loop.run_in_executor(None, model.engine.shutdown)
            model.engine = None
        await self._notify()

    async def _wait_for_change(self) -> None:
        changed = self._condition()
        async with changed:
            await changed.wait()

    async def _notify(self) -> None:
        changed = self._condition()
        async with changed:
            changed.notify_all()

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def _unload(self, path: Path) -> bool:
        model = self._models.get(path)
        if model is not None:
            del self._models[path]  # new requests start a fresh engine
            with contextlib.suppress(Exception):
                await asyncio.shield(model.ready)
            while model.active:
                await self._wait_for_change()
            await self._shutdown(model)
            return True
        with self._lock:
            lora_id = self._lora_ids.get(path)
        found = False
        for model in list(self._models.values()):
            if lora_id is not None and lora_id in model.loras:
                model.loras.discard(lora_id)
                found = True
                remove = getattr(model.engine, "remove_lora", None)
                if remove is not None:
                    with contextlib.suppress(Exception):
                        await remove(lora_id)
        return found

    async def _snapshot(self) -> list[tuple[bool, int]]:
        return [(m.full_model, len(m.loras)) for m in self._models.values() if m.engine is not None]

    async def _close(self) -> None:
        for job in list(self._jobs):
            self._cancel_job(job)
        tasks = [job.task for job in self._jobs if job.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for model in list(self._models.values()):
            with contextlib.suppress(Exception):
                await asyncio.shield(model.ready)
            await self._shutdown(model)

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()


def _token_logprob(token_id: int, position: dict[int, Any], top_logprobs: int, vocab: TokenVocabulary) -> TokenLogprob:
    """One position of vLLM's `logprobs` (token id → `Logprob(logprob, rank, …)`) in openft's form.

    vLLM adds the sampled token to the k most likely when it is not among them; OpenAI's `top_logprobs` are
    the k most likely alone, so the entries are sorted and cut to k.
    """
    if token_id not in position:
        raise RuntimeError("vLLM returned no logprob for the token it generated.")
    ranked = sorted(position.items(), key=lambda item: -item[1].logprob)[:top_logprobs]
    top = [TopLogprob(vocab.token_text(t), float(entry.logprob), list(vocab.token_bytes(t))) for t, entry in ranked]
    chosen = float(position[token_id].logprob)
    return TokenLogprob(vocab.token_text(token_id), chosen, list(vocab.token_bytes(token_id)), top)


def _response_format(params: GenerationParams) -> tuple[str, dict[str, Any]] | None:
    """The structured-outputs options of a reply's `response_format`: vLLM's guided JSON with the strict
    json_schema's schema (openft's own checker still checks every token, see `VllmEngine._feed`), or any
    JSON object."""
    if params.json_schema is not None:
        return "response_format", {"json": params.json_schema}
    return ("response_format", {"json_object": True}) if params.json_object else None


def _call_schema(names: list[str]) -> dict[str, Any]:
    """The JSON schema of one call to one of `names` (OpenAI's `arguments` is any object)."""
    return {
        "type": "object",
        "properties": {"name": {"type": "string", "enum": names}, "arguments": {"type": "object"}},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def _adapter_rank(adapter: Path) -> int:
    """The largest LoRA rank in an adapter's config (`r`, and `rank_pattern`'s per-module ranks)."""
    try:
        config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelNotFound("The model's adapter is missing on this server.", param="model") from exc
    ranks = [config.get("r")]
    pattern = config.get("rank_pattern")
    if isinstance(pattern, dict):
        ranks += list(pattern.values())
    return max((r for r in ranks if isinstance(r, int)), default=0)


def _round_rank(rank: int) -> int:
    """The smallest rank vLLM accepts that holds `rank` (an adapter above 512 is refused by vLLM itself)."""
    return next((r for r in LORA_RANKS if r >= rank), rank)


def _generation_config(folder: Path, config: Any) -> GenerationConfig:
    """The model's generation config from its files (else derived from its config): the weights are vLLM's."""
    try:
        return GenerationConfig.from_pretrained(folder)
    except OSError:
        return GenerationConfig.from_model_config(config)


__all__ = ["DEFAULT_MAX_LORA_RANK", "VLLM_MISSING", "VllmApi", "VllmEngine", "load_vllm_api"]
