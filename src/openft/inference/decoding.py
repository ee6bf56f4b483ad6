"""Token choices for one request's `n` copies of one prompt, step by step, as a stream of deltas.

Its own code rather than `model.generate` (the forward passes are run by the batch scheduler,
`openft.inference.scheduler`, over many requests at once): it samples with a private RNG (see `TokenSampler`), applies
OpenAI's penalties, constrains tokens for json_object, ends each choice on its own stop strings, and
yields text as soon as it is certain. A non-streamed reply is the concatenation of the same deltas,
so streamed and non-streamed replies are equal by construction, not by two implementations agreeing.

The `n` rows share one prompt: the scheduler runs it once and copies its KV cache to the `n` rows.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedTokenizerBase

from openft.inference.json_prefix import JsonObjectPrefix
from openft.inference.json_schema import JsonSchemaPrefix, SchemaNode
from openft.inference.sampling import TokenSampler, apply_penalties
from openft.inference.stops import StopMatcher
from openft.inference.tokens import IncrementalDecoder, TokenVocabulary
from openft.inference.toolcall_parser import ToolCallParser
from openft.inference.types import (
    FinishReason,
    GenerationChoice,
    GenerationParams,
    StreamDelta,
    TokenLogprob,
    ToolCall,
    TopLogprob,
)

JSON_MAX_WHITESPACE = 32
"""json_object: longest run of whitespace allowed between JSON tokens (stops endless blank lines)."""
JSON_CANDIDATES = 64
"""json_object: most likely tokens tried before falling back to single-character tokens."""


@dataclass(frozen=True)
class DecodePlan:
    """Everything about one request's generation that is settled before its first token."""

    prompt_ids: list[int]
    params: GenerationParams
    max_new_tokens: int
    """Per choice, counting `forced_ids`."""
    stop_token_ids: frozenset[int]
    forced_ids: list[int] = field(default_factory=list)
    """Tokens every choice starts with (a forced tool call's opening); run with the prompt, not sampled."""
    json_from: int | None = None
    """Where in the choice's text a JSON object must start (json_object or a forced tool call); None: free."""
    json_schema: SchemaNode | None = None
    """The schema that JSON object must follow (a strict json_schema response format); None: any object."""
    tool_names: frozenset[str] | None = None
    """Functions whose calls are parsed out of the text; None: tool calls are not parsed."""
    echo: str = ""
    """Text put before each choice's reply (legacy completions' `echo`)."""


@dataclass
class _Token:
    start: int
    """Offset of the token's text in the choice's text; its logprob is reported if its text is kept."""
    end: int
    logprob: TokenLogprob


class ChoiceState:
    """One row of the batch: its text so far, what has been sent of it, and why it ended."""

    def __init__(self, index: int, plan: DecodePlan, tokenizer: PreTrainedTokenizerBase, vocab: TokenVocabulary):
        self.index = index
        self._plan = plan
        self._vocab = vocab
        self.decoder = IncrementalDecoder(tokenizer)
        for token_id in plan.forced_ids:
            self.decoder.add(token_id)
        self.generated = len(plan.forced_ids)
        self.finish_reason: FinishReason | None = None
        self._final_text: str | None = None
        self._stops = StopMatcher(plan.params.stop or [])  # fed from here: the forced opening is not searched
        self._sent = 0  # chars of the reply (text, or content with tools) already sent
        self._tokens: list[_Token] = []
        self._tokens_sent = 0
        self._tools = ToolCallParser(plan.tool_names) if plan.tool_names is not None else None
        self.json: JsonObjectPrefix | JsonSchemaPrefix | None = None
        if plan.json_from is not None:
            self.json = (
                JsonObjectPrefix(JSON_MAX_WHITESPACE)
                if plan.json_schema is None
                else JsonSchemaPrefix(plan.json_schema, JSON_MAX_WHITESPACE)
            )
            ok, _ = self.json.feed(self.decoder.text[plan.json_from :])
            if not ok:  # a tokenizer that does not decode the forced opening back as it was: go unconstrained
                self.json = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def opening(self) -> StreamDelta | None:
        return StreamDelta(self.index, text=self._plan.echo) if self._plan.echo else None

    def acceptable(self, token_id: int) -> bool:
        """Under the JSON constraint: does `token_id` keep the text a prefix of one JSON object (of the schema)?"""
        assert self.json is not None
        if token_id in self._plan.stop_token_ids:
            return False  # the object is not complete yet (a complete one ends the choice by itself)
        text, pending = self.decoder.peek(token_id)
        if not text and not pending:
            return False  # adds nothing (a special token): no progress towards the object
        state = self.json.copy()
        ok, closed_at = state.feed(text)
        return ok and (closed_at is not None or not pending or state.in_string)

    def add(self, token_id: int, logprob: TokenLogprob | None) -> None:
        self.generated += 1
        if token_id in self._plan.stop_token_ids:
            self.finish("stop")
            return
        start = len(self.decoder.text)
        self.decoder.add(token_id)
        text = self.decoder.text
        if logprob is not None:
            self._tokens.append(_Token(start, len(text), logprob))
        cuts = []
        if self.json is not None and len(text) > start:
            _, closed_at = self.json.feed(text[start:])  # valid: `acceptable` checked it
            if closed_at is not None:
                cuts.append(start + closed_at)
        if self._stops and (cut := self._stops.feed(text, start, len(text))) is not None:
            cuts.append(cut)
        if cuts:
            self.finish("stop", text[: min(cuts)])

    def finish(self, reason: FinishReason, text: str | None = None) -> None:
        """End the choice; `text` cuts it (stop string, closed JSON object), else all decoded text counts."""
        self.finish_reason = reason
        self._final_text = text if text is not None else self.decoder.flush()

    def delta(self) -> StreamDelta | None:
        """What became certain since the last delta; the last one carries the finish reason."""
        if self._final_text is not None:
            return self._last_delta(self._final_text)
        text = self.decoder.text
        settled = len(text) - self._stops.held
        # Only what was added since the last delta is looked at (no copy of the reply per token either).
        tools = self._tools
        new_text = text[self._sent : settled] if tools is None else tools.settled_delta(text, settled)
        self._sent += len(new_text)
        tokens = self._take_tokens(lambda token: token.end <= settled)
        if not new_text and not tokens:
            return None
        return StreamDelta(self.index, text=new_text, logprobs=tokens)

    def _last_delta(self, text: str) -> StreamDelta:
        assert self.finish_reason is not None
        calls = None
        reason = self.finish_reason
        if self._tools is not None:
            content, parsed = self._tools.finish(text)
            if parsed:
                calls = [ToolCall(f"call_{uuid.uuid4().hex[:24]}", call.name, call.arguments) for call in parsed]
                reason = "tool_calls"
        else:
            content = text
        new_text = content[self._sent :]
        self._sent = len(content)
        tokens = self._take_tokens(lambda token: token.start < len(text))
        return StreamDelta(self.index, text=new_text, logprobs=tokens, tool_calls=calls, finish_reason=reason)

    def _take_tokens(self, keep: Callable[[_Token], bool]) -> list[TokenLogprob] | None:
        if not self._plan.params.logprobs:
            return None
        taken = []
        while self._tokens_sent < len(self._tokens) and keep(self._tokens[self._tokens_sent]):
            taken.append(self._tokens[self._tokens_sent].logprob)
            self._tokens_sent += 1
        if self._final_text is not None:
            self._tokens_sent = len(self._tokens)  # the rest fell after a stop string
        return taken


class RequestDecoder:
    """One request's token choices, step by step: the batch scheduler runs the forward passes and hands
    each step's logits for this request's `n` rows to `advance`, which samples, constrains and feeds every
    choice and returns the deltas that became certain.

    The request's own state (sampler RNG, penalty counts, choices) lives here, apart from every other
    request in the batch: a request's tokens do not depend on what it is batched with (greedy output equals
    the output alone; a seeded request draws from its own generator).
    """

    def __init__(self, plan: DecodePlan, tokenizer: PreTrainedTokenizerBase, vocab: TokenVocabulary):
        self._vocab = vocab
        self._plan = plan
        self.params = plan.params
        self._sampler = TokenSampler(
            temperature=self.params.temperature, top_p=self.params.top_p, seed=self.params.seed
        )
        self._choices = [ChoiceState(i, plan, tokenizer, vocab) for i in range(self.params.n)]
        self._counts: torch.Tensor | None = None  # per row and token: times generated (for the penalties)
        self._steps = 0
        self._limit = plan.max_new_tokens - len(plan.forced_ids)
        self.next_ids: list[int] = []
        """The token each row feeds to the next forward pass (rows that finished keep riding along)."""
        self.done = self._limit <= 0

    @property
    def rows(self) -> int:
        return self.params.n

    @property
    def prompt_ids(self) -> list[int]:
        """What the first forward pass runs: the prompt and the forced opening, once for all `n` rows."""
        return self._plan.prompt_ids + self._plan.forced_ids

    @property
    def prompt_tokens(self) -> int:
        return len(self._plan.prompt_ids)

    @property
    def max_new_tokens(self) -> int:
        """Forward passes after the prompt's at most (what the KV cache must hold beyond the prompt)."""
        return max(0, self._limit)

    @property
    def steps_left(self) -> int:
        return max(0, self._limit - self._steps)

    @property
    def completion_tokens(self) -> int:
        """Tokens generated so far over all choices (forced ones and end-of-sequence tokens included)."""
        return sum(choice.generated for choice in self._choices)

    def opening(self) -> list[StreamDelta]:
        """Deltas before any token (legacy completions' echo)."""
        return [delta for choice in self._choices if (delta := choice.opening()) is not None]

    def finish_now(self) -> list[StreamDelta]:
        """End every unfinished choice with "length" (no room for a token at all)."""
        deltas = []
        for choice in self._choices:
            if not choice.done:
                choice.finish("length")
                if (delta := choice.delta()) is not None:
                    deltas.append(delta)
        self.done = True
        return deltas

    @torch.inference_mode()
    def advance(self, logits: torch.Tensor) -> list[StreamDelta]:
        """Take one step's logits — `(1, vocab)` after the prompt (shared by the `n` rows) or `(n, vocab)` —
        and return the deltas it settles; sets `next_ids` and `done`."""
        params, choices = self.params, self._choices
        deltas: list[StreamDelta] = []
        logits = logits.float().expand(params.n, -1) if logits.shape[0] == 1 else logits.float()
        if params.penalized:
            if self._counts is None:
                self._counts = torch.zeros((params.n, logits.shape[-1]))
            logits = apply_penalties(
                logits, self._counts, presence=params.presence_penalty, frequency=params.frequency_penalty
            )
        next_ids = self._sampler(logits).tolist()
        for row, choice in enumerate(choices):
            if choice.done:
                continue
            if choice.json is not None and not choice.acceptable(next_ids[row]):
                constrained = self._constrained(choice, logits[row])
                if constrained is None:
                    choice.finish("length")  # nothing keeps the JSON valid: end with what is there
                    if (delta := choice.delta()) is not None:
                        deltas.append(delta)
                    continue
                next_ids[row] = constrained
        logprobs = self._logprobs(logits, next_ids, choices) if params.logprobs else [None] * params.n
        for row, choice in enumerate(choices):
            if choice.done:
                continue
            choice.add(next_ids[row], logprobs[row])
            if self._counts is not None:
                self._counts[row, next_ids[row]] += 1
            if (delta := choice.delta()) is not None:
                deltas.append(delta)
        self._steps += 1
        self.next_ids = next_ids
        if all(choice.done for choice in choices):
            self.done = True
        elif self._steps >= self._limit:
            deltas += self.finish_now()
        return deltas

    def _constrained(self, choice: ChoiceState, logits: torch.Tensor) -> int | None:
        """The sampler's pick among tokens that keep the JSON valid: its most likely candidates first, then
        every single-character token (some of them always continues a JSON prefix)."""
        order = self._sampler.ranked(logits)
        for token_id in order[:JSON_CANDIDATES].tolist():
            if choice.acceptable(token_id):
                return token_id
        rank = torch.empty_like(order)
        rank[order] = torch.arange(len(order))
        fallback = sorted(self._vocab.single_character_ids, key=lambda token_id: int(rank[token_id]))
        return next((token_id for token_id in fallback if choice.acceptable(token_id)), None)

    def _logprobs(
        self, logits: torch.Tensor, next_ids: list[int], choices: list[ChoiceState]
    ) -> list[TokenLogprob | None]:
        """Log-softmax of the (penalized) logits before temperature and top_p, as OpenAI reports them."""
        logprobs = torch.log_softmax(logits, dim=-1)
        chosen = logprobs.gather(1, torch.tensor(next_ids)[:, None])[:, 0].tolist()
        best = logprobs.topk(self.params.top_logprobs, dim=-1)
        top_values, top_ids = best.values.tolist(), best.indices.tolist()
        vocab = self._vocab
        entries: list[TokenLogprob | None] = []
        for row, choice in enumerate(choices):
            if choice.done:
                entries.append(None)
                continue
            token_id = next_ids[row]
            top = [
                TopLogprob(vocab.token_text(t), v, list(vocab.token_bytes(t)))
                for t, v in zip(top_ids[row], top_values[row], strict=True)
            ]
            entries.append(
                TokenLogprob(vocab.token_text(token_id), chosen[row], list(vocab.token_bytes(token_id)), top)
            )
        return entries


def collect(deltas: Iterator[StreamDelta], n: int, logprobs: bool) -> list[GenerationChoice]:
    """Put a generation's deltas together into its `n` choices: exactly what a stream would have sent."""
    texts: list[list[str]] = [[] for _ in range(n)]
    tokens: list[list[TokenLogprob]] = [[] for _ in range(n)]
    calls: list[list[ToolCall]] = [[] for _ in range(n)]
    reasons: list[FinishReason | None] = [None] * n
    for delta in deltas:
        texts[delta.index].append(delta.text)
        tokens[delta.index] += delta.logprobs or []
        calls[delta.index] += delta.tool_calls or []
        reasons[delta.index] = delta.finish_reason or reasons[delta.index]
    choices = []
    for i in range(n):
        text = "".join(texts[i])
        reason = reasons[i]
        assert reason is not None, "every choice ends with a finish reason"
        choices.append(
            GenerationChoice(
                text=None if calls[i] and not text else text,
                finish_reason=reason,
                logprobs=tokens[i] if logprobs else None,
                tool_calls=calls[i] or None,
            )
        )
    return choices
