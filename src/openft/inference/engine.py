"""`InferenceEngine`: chat and legacy completions from a base model, a LoRA adapter on it, or a full fine-tune."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openft.datasets.toolcalls import HERMES_OPEN
from openft.errors import ContextLengthExceeded, InvalidRequest
from openft.inference.decoding import DecodePlan, RequestDecoder
from openft.inference.prompt import render_prompt
from openft.inference.registry import (
    DEFAULT_KV_CACHE_BYTES,
    ActiveModel,
    ModelRegistry,
    default_max_model_bytes,
    read_context_length,
)
from openft.inference.scheduler import DEFAULT_MAX_BATCH_ROWS, BatchRequest, KvBudgetExceeded
from openft.inference.stream import GenerationStream, StreamChannel, read_all
from openft.inference.types import GenerationParams, GenerationResult, ModelTarget

CHAT_DEFAULT_MAX_TOKENS = 512
"""Reply length of a chat request that sets no max_tokens (further capped by the room left in the context).
Legacy completions always say theirs (`openft.protocol.completions.COMPLETIONS_DEFAULT_MAX_TOKENS`)."""


class InferenceEngine:
    """Answers chat and completion requests with Hugging Face models, loading them on first use.

    Thread-safe: call it from several threads. Requests on the same model — with any of its LoRA adapters,
    or none — are decoded together in one continuously changing batch (`openft.inference.scheduler`);
    requests on different models run in parallel. `org` (the caller's organization) is the key of the
    round-robin turns of waiting requests.

    Everything a request can get wrong (bad tools or tool_choice, a template that rejects the messages,
    a prompt that fills the context, a folder without a model) raises from the call itself, before a
    stream is returned, so the API can still answer with a plain 4xx.

    `params.json_object` (response_format json_object) constrains decoding: every token must keep the
    text a prefix of one JSON object (RFC 8259; the first character is `{`; no more than 32 whitespace
    characters in a row between tokens), and the reply ends, finish_reason "stop", as soon as that
    object is closed. Guaranteed: with finish_reason "stop" the text is exactly one complete JSON object
    (`json.loads` gives a dict) unless a stop string cut it first; with "length" it is a valid but
    unfinished prefix. It is best effort in that the model, not a grammar, picks what goes inside.
    `params.json_schema` (a strict response_format json_schema) narrows that to objects the schema accepts
    (`openft.inference.json_schema`): with finish_reason "stop" the reply validates against the schema.

    Tools: `tool_choice` "none" hides the tools from the template and parses no calls; "auto" (the
    default with tools) passes them to the chat template and parses calls out of the reply (see
    `openft.inference.toolcall_parser`); a reply with calls ends with finish_reason "tool_calls". "required" and
    a named function are best effort: the reply is forced to open a call in the format the model knows
    (`<tool_call>\\n` when its template mentions it, else the trainer's JSON line), with the function name
    when it is named (or the only tool) and `"arguments": {`, then decoded under the JSON constraint and
    ended when the call's object closes. So a named function gives finish_reason "tool_calls" with exactly
    one call to it and valid JSON arguments, unless max_tokens cuts it first ("length", partial text, no
    call); "required" with several tools gives a call only if the model writes one of their names.
    """

    def __init__(
        self,
        max_adapters: int = 8,
        max_adapter_bytes: int | None = None,
        max_model_bytes: int | None = None,
        kv_cache_bytes: int = DEFAULT_KV_CACHE_BYTES,
        max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS,
        device: str | None = None,
        on_step: Callable[[int], None] | None = None,
    ):
        """`max_adapters`, `max_adapter_bytes`: LoRA adapters (and bytes of their weights) kept loaded over
        all bases; the least recently used are unloaded beyond either. None: no byte limit.

        `max_model_bytes`: memory budget of every loaded model (bases, full fine-tunes, checkpoints) and
        adapter together; the least recently used idle models are unloaded beyond it (see
        `openft.inference.registry`). None: half of this machine's memory (`default_max_model_bytes`).

        `kv_cache_bytes`, `max_batch_rows`: bounds of each model's running batch (its KV cache, its rows);
        requests beyond them wait for room. `device`: where models are served (`cpu`, `cuda`, `cuda:1`);
        None: the first GPU if CUDA works, else the CPU. `on_step(rows)`: called after every forward pass
        (operators' metrics).
        """
        if max_model_bytes is None:
            max_model_bytes = default_max_model_bytes()
        self._registry = ModelRegistry(
            max_adapters,
            max_adapter_bytes,
            max_model_bytes,
            kv_cache_bytes=kv_cache_bytes,
            max_batch_rows=max_batch_rows,
            device=device,
            on_step=on_step,
        )

    def chat(
        self,
        target: ModelTarget,
        messages: list[dict[str, Any]],
        params: GenerationParams,
        tools: list[dict[str, Any]] | None = None,
        *,
        org: str | None = None,
    ) -> GenerationResult:
        """Generate `params.n` assistant replies to `messages`, rendered with the model's chat template.

        Each reply has at most `params.max_tokens` tokens, or, when that is None, CHAT_DEFAULT_MAX_TOKENS (512);
        either way it is capped by the room the prompt leaves in the model's context, and a reply cut by
        that cap ends with finish_reason "length". Raises ContextLengthExceeded (param "messages") when the
        prompt leaves no room at all, and InvalidRequest for content the template or model cannot take.
        """
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
        """`chat`, streamed: its deltas concatenate to exactly what `chat` returns for the same seed.

        Returns once the request is queued for its model's batch (`stream.started` says when it joined)."""
        return self._submit(target, chat_plan(messages, params, tools), org)

    def complete(
        self,
        target: ModelTarget,
        prompt: str | list[int],
        params: GenerationParams,
        *,
        echo: bool = False,
        org: str | None = None,
    ) -> GenerationResult:
        """Legacy completions: continue `prompt` as it is (no chat template); `echo` puts it before each reply.

        The prompt is tokenized with the tokenizer's own special tokens (e.g. a BOS). Tools and tool_choice
        do not apply. ContextLengthExceeded names param "prompt".
        """
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
        """`complete`, streamed; with `echo` the first delta of each choice is the prompt."""
        return self._submit(target, completion_plan(prompt, params, echo), org)

    def context_length(self, target: ModelTarget) -> int | None:
        """The target's context window in tokens, read from its config; None when the config has none."""
        return read_context_length(target)

    def waiting(self, target: ModelTarget) -> int:
        """Requests on the target's model that wait for room in its batch."""
        return self._registry.waiting(target)

    def close(self) -> None:
        """Unload every model; requests still running end with an error."""
        self._registry.close()

    def unload(self, path: Path) -> bool:
        """Drop the adapter, full model or base at `path` from memory (e.g. its model was deleted).

        Waits for a request using it to finish; returns False when it was not loaded.
        """
        return self._registry.unload(path)

    def stats(self) -> dict[str, int]:
        """`bases_loaded`, `full_models_loaded`, `adapters_loaded`, `adapter_bytes` (weights of loaded adapters),
        `model_bytes` (loaded models), `memory_bytes` (both: what the budget counts), `models_evicted`, and the
        batches' `requests_waiting`, `requests_running`, `rows_running`, `batch_steps_total`, `batch_rows_total`,
        `tokens_generated_total`, `kv_cache_bytes_used`, `kv_cache_bytes_limit` (summed over models)."""
        return self._registry.stats()

    def _submit(
        self, target: ModelTarget, plan_for: Callable[[ActiveModel], DecodePlan], org: str | None
    ) -> GenerationStream:
        """Hold the model, settle the whole request and queue it for the model's batch; on any error the
        model is given back and it raises (so bad input is still a plain 4xx)."""
        lease = self._registry.acquire(target)
        try:
            active = lease.active
            with active.tokenizer_lock:
                decoder = RequestDecoder(plan_for(active), active.tokenizer, active.vocab)
            try:
                lease.scheduler.check_fits(decoder)
            except KvBudgetExceeded as exc:
                raise InvalidRequest(str(exc), param="max_tokens") from None
            channel = StreamChannel()
            stream = GenerationStream(channel, decoder.prompt_tokens)
            lease.scheduler.submit(BatchRequest(decoder, channel, lease.adapter_id, org, on_done=lease.release))
        except BaseException:
            lease.release()
            raise
        return stream


@dataclass(frozen=True)
class _Tools:
    """What the tools and tool_choice of a chat request mean for rendering and decoding."""

    for_template: list[dict[str, Any]] | None
    names: frozenset[str] | None
    """Parse calls to these out of the reply; None: do not parse."""
    forced: bool = False
    forced_name: str | None = None


def tool_settings(params: GenerationParams, tools: list[dict[str, Any]] | None) -> _Tools:
    choice = params.tool_choice
    if not tools:
        if choice not in (None, "none"):
            raise InvalidRequest("tool_choice is only allowed when tools are specified.", param="tool_choice")
        return _Tools(None, None)
    names = []
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if not (
            isinstance(function, dict) and tool.get("type") == "function" and isinstance(function.get("name"), str)
        ):
            raise InvalidRequest('Each tool must be {"type": "function", "function": {"name": …}}.', param="tools")
        names.append(function["name"])
    if choice == "none":
        return _Tools(None, None)
    if choice in (None, "auto"):
        return _Tools(tools, frozenset(names))
    if choice == "required":
        return _Tools(tools, frozenset(names), forced=True, forced_name=names[0] if len(set(names)) == 1 else None)
    assert isinstance(choice, dict)
    name = choice["function"]["name"]
    if name not in names:
        raise InvalidRequest(f"tool_choice names the function {name!r}, which is not in tools.", param="tool_choice")
    return _Tools(tools, frozenset(names), forced=True, forced_name=name)


def forced_call_opening(chat_template: str, name: str | None) -> tuple[str, int]:
    """The text a forced tool call starts with, and where its JSON object starts in it."""
    tag = f"{HERMES_OPEN}\n" if HERMES_OPEN in chat_template else ""
    if name is None:
        return tag + '{"name": "', len(tag)
    return tag + '{"name": ' + json.dumps(name, ensure_ascii=False) + ', "arguments": {', len(tag)


def chat_plan(
    messages: list[dict[str, Any]], params: GenerationParams, tools: list[dict[str, Any]] | None
) -> Callable[[ActiveModel], DecodePlan]:
    settings = tool_settings(params, tools)  # checked before the base is even waited for

    def plan(active: ActiveModel) -> DecodePlan:
        tokenizer = active.tokenizer
        prompt_ids = render_prompt(tokenizer, messages, settings.for_template)
        max_new_tokens = _max_new_tokens(len(prompt_ids), active.context_length, params.max_tokens, "messages")
        forced_ids: list[int] = []
        json_from = 0 if params.json_object else None
        schema = params.schema  # the reply's schema, not the forced call's
        if settings.forced:
            schema = None
            opening, json_from = forced_call_opening(str(tokenizer.chat_template or ""), settings.forced_name)
            forced_ids = tokenizer(opening, add_special_tokens=False)["input_ids"]
        return DecodePlan(
            prompt_ids=prompt_ids,
            params=params,
            max_new_tokens=max_new_tokens,
            stop_token_ids=active.stop_token_ids,
            forced_ids=forced_ids,
            json_from=json_from,
            json_schema=schema,
            tool_names=settings.names,
        )

    return plan


def completion_plan(
    prompt: str | list[int], params: GenerationParams, echo: bool
) -> Callable[[ActiveModel], DecodePlan]:
    """A legacy completion's plan. `prompt` is text, tokenized with the tokenizer's own special tokens, or token
    ids (the API accepts both), fed as they are once each is known to be in the model's vocabulary."""
    if isinstance(prompt, list):
        if not prompt or not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            raise InvalidRequest("A token prompt must be a non-empty list of integer token ids.", param="prompt")
    elif not isinstance(prompt, str):
        raise InvalidRequest("prompt must be a string or a list of token ids.", param="prompt")

    def plan(active: ActiveModel) -> DecodePlan:
        tokenizer = active.tokenizer
        if isinstance(prompt, list):
            prompt_ids = _checked_token_ids(prompt, active)
        else:
            prompt_ids = list(tokenizer(prompt)["input_ids"])
        if not prompt_ids:
            start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
            if start is None:
                raise InvalidRequest("The prompt is empty.", param="prompt")
            prompt_ids = [start]  # what an empty prompt means to a causal LM: the start of a document
        max_new_tokens = _max_new_tokens(len(prompt_ids), active.context_length, params.max_tokens, "prompt")
        echoed = "" if not echo else prompt if isinstance(prompt, str) else str(tokenizer.decode(prompt_ids))
        return DecodePlan(
            prompt_ids=prompt_ids,
            params=params,
            max_new_tokens=max_new_tokens,
            stop_token_ids=active.stop_token_ids,
            json_from=0 if params.json_object else None,
            json_schema=params.schema,
            echo=echoed,
        )

    return plan


def vocabulary_size(active: ActiveModel) -> int:
    """How many token ids the model can take: the tokenizer's (added tokens included), or fewer when the
    model's embedding table is smaller (an id past it would fail inside the forward pass, not as a 400)."""
    size = len(active.tokenizer)
    config = getattr(active.model, "config", None)
    embedded = getattr(config, "vocab_size", None)
    return min(size, embedded) if isinstance(embedded, int) and embedded > 0 else size


def _checked_token_ids(ids: list[int], active: ActiveModel) -> list[int]:
    size = vocabulary_size(active)
    bad = next((t for t in ids if not 0 <= t < size), None)
    if bad is not None:
        raise InvalidRequest(
            f"Token id {bad} in the prompt is not in the model's vocabulary (ids 0 to {size - 1}).", param="prompt"
        )
    return list(ids)


def _max_new_tokens(prompt_tokens: int, context_length: int | None, requested: int | None, param: str) -> int:
    wanted = requested if requested is not None else CHAT_DEFAULT_MAX_TOKENS
    if context_length is None:
        return wanted
    room = context_length - prompt_tokens
    if room <= 0:
        what = "messages take" if param == "messages" else "prompt takes"
        raise ContextLengthExceeded(
            f"This model's maximum context length is {context_length} tokens, but the {what} "
            f"{prompt_tokens} tokens, which leaves no room for a reply. Shorten the {param}.",
            param=param,
        )
    return min(wanted, room)
