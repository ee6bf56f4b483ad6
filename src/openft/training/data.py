"""Chat examples (and preference pairs) → token ids + a mask of the tokens the loss is computed on.

Masking rule: the model learns only what trainable assistant messages (weight 1) say. The tokens of
assistant message k are those that `apply_chat_template(messages[:k+1])` adds after
`apply_chat_template(messages[:k], add_generation_prompt=True)`: the reply itself plus the template's
end-of-turn token, so the model also learns to stop. Everything else (system, user, tool results,
weight-0 replies, the template's role headers) is context only.

The prefix property ("rendering more messages only appends tokens") holds for ordinary chat templates
but not for every one (some rewrite earlier turns, and BPE can merge across a boundary), so the rule
compares token by token and keeps the longest common prefix instead of trusting it. It is computed from a
single render of the conversation (`openft.training.chat_encoding`), so the cost is linear in its length.

A preference pair (DPO) is two such examples, prompt + preferred answer and prompt + rejected answer,
with only the answer trainable: the masking rule is the same, so SFT and DPO learn from the same tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

from openft.datasets.chat import ChatExample, DataFormatError, Problem
from openft.datasets.preference import PreferenceExample
from openft.datasets.template import TemplateLimitError
from openft.datasets.toolcalls import template_renders_tool_calls, with_tool_calls_for_template
from openft.training.chat_encoding import TemplateRefused, encode_conversation

VALIDATION_SAMPLE_STREAM = 2**63
"""The second seed word of the validation sample's generator; epoch orders use the epoch there (always smaller)."""
T = TypeVar("T")


@dataclass(frozen=True)
class TokenizedExample:
    line: int
    """1-based line of the JSONL file, for messages that name examples."""
    input_ids: list[int]
    target_mask: list[bool]
    """True where the token is a training target (predicted from the tokens before it)."""

    @property
    def n_targets(self) -> int:
        return sum(self.target_mask[1:])  # the first token has nothing before it to be predicted from


@dataclass(frozen=True)
class TokenizedPair:
    """A preference pair: prompt + preferred answer and prompt + rejected answer, each trained on the answer only."""

    line: int
    chosen: TokenizedExample
    rejected: TokenizedExample


@dataclass
class PreparedData(Generic[T]):
    examples: list[T] = field(default_factory=list)
    truncated_lines: list[int] = field(default_factory=list)
    skipped_lines: list[int] = field(default_factory=list)
    """Examples left with no trainable token (after truncation); they are not trained on."""


def template_messages(messages: Sequence[dict[str, Any]], *, native_tool_calls: bool) -> list[dict[str, Any]]:
    """Normalized messages in the shape chat templates expect (no `weight`, content always a string).

    When the template cannot print tool calls, they are appended to the content as one JSON object per
    line (`openft.datasets.toolcalls`, the format inference reads them back in), so the model still sees
    (and learns to produce) them.
    """
    rendered = []
    for message in messages:
        out = {k: v for k, v in message.items() if k != "weight"}
        out["content"] = message.get("content") or ""
        rendered.append(with_tool_calls_for_template(out, native_tool_calls=native_tool_calls))
    return rendered


def tokenize_example(
    tokenizer: Any, example: ChatExample, *, max_seq_len: int, native_tool_calls: bool | None = None
) -> tuple[TokenizedExample, bool]:
    """The example's ids and target mask, cut to `max_seq_len`; the flag says whether it was cut.

    One render and one tokenization per example (`openft.training.chat_encoding`), so long conversations
    cost time in proportion to their length, not to its square.
    """
    if native_tool_calls is None:
        native_tool_calls = template_renders_tool_calls(tokenizer)
    messages = template_messages(example.messages, native_tool_calls=native_tool_calls)
    trainable = [i for i, m in enumerate(example.messages) if m["role"] == "assistant" and m.get("weight", 1) == 1]
    try:
        # Nothing after the last trainable reply is learned from, so the sequence ends there.
        full, mask = encode_conversation(tokenizer, messages, trainable, example.tools)
    except (TemplateLimitError, TemplateRefused) as exc:
        problem = Problem(example.line, "message_format", f"cannot render it with the model's chat template: {exc}")
        raise DataFormatError(problem) from exc
    except Exception as exc:  # jinja2 TemplateError and friends: the template refuses this conversation
        problem = Problem(example.line, "message_format", f"the model's chat template rejected it: {exc}")
        raise DataFormatError(problem) from exc
    truncated = len(full) > max_seq_len
    return TokenizedExample(example.line, full[:max_seq_len], mask[:max_seq_len]), truncated


def prepare(tokenizer: Any, examples: Sequence[ChatExample], *, max_seq_len: int) -> PreparedData[TokenizedExample]:
    """Tokenize every example; cut the long ones, set aside those with nothing left to learn."""
    native = template_renders_tool_calls(tokenizer)
    prepared: PreparedData[TokenizedExample] = PreparedData()
    for example in examples:
        tokenized, truncated = tokenize_example(tokenizer, example, max_seq_len=max_seq_len, native_tool_calls=native)
        if truncated:
            prepared.truncated_lines.append(example.line)
        if tokenized.n_targets == 0:
            prepared.skipped_lines.append(example.line)
        else:
            prepared.examples.append(tokenized)
    return prepared


def answered_example(example: PreferenceExample, answer: dict[str, Any]) -> ChatExample:
    """The prompt followed by `answer`, with the answer the only trainable message."""
    prompt = [{**m, "weight": 0} if m["role"] == "assistant" else m for m in example.prompt_messages]
    return ChatExample(example.line, [*prompt, {**answer, "weight": 1}], example.tools)


def prepare_pairs(
    tokenizer: Any, examples: Sequence[PreferenceExample], *, max_seq_len: int
) -> PreparedData[TokenizedPair]:
    """Tokenize both sides of every pair; a pair is skipped when either answer has no token left to learn."""
    native = template_renders_tool_calls(tokenizer)
    prepared: PreparedData[TokenizedPair] = PreparedData()
    for example in examples:
        chosen, cut_chosen = tokenize_example(
            tokenizer, answered_example(example, example.chosen), max_seq_len=max_seq_len, native_tool_calls=native
        )
        rejected, cut_rejected = tokenize_example(
            tokenizer, answered_example(example, example.rejected), max_seq_len=max_seq_len, native_tool_calls=native
        )
        if cut_chosen or cut_rejected:
            prepared.truncated_lines.append(example.line)
        if chosen.n_targets == 0 or rejected.n_targets == 0:
            prepared.skipped_lines.append(example.line)
        else:
            prepared.examples.append(TokenizedPair(example.line, chosen, rejected))
    return prepared


# Order and batches ------------------------------------------------------------------------------


def epoch_order(seed: int, epoch: int, n_examples: int) -> list[int]:
    """Example order of one epoch: a function of (seed, epoch) only, so a resume needs just the step."""
    # `% 2**64` leaves every non-negative seed as it is and makes a negative one acceptable to SeedSequence.
    return [int(i) for i in np.random.default_rng([seed % 2**64, epoch]).permutation(n_examples)]


def sampling_seed(*words: int) -> int:
    """A torch seed drawn from `words` (job seed, stream, step, …): reinforcement jobs seed each prompt's
    sampling and each judge call with one, so what they draw depends on where they are, not on history."""
    return int(np.random.SeedSequence([w % 2**64 for w in words]).generate_state(1, dtype=np.uint64)[0] >> 1)


def validation_sample(seed: int, n_examples: int, size: int) -> list[int]:
    """The validation examples of the sampled `valid_loss`: chosen once from the seed, in file order.

    Drawn from a generator of its own, never from the ones training draws from, so sampling changes no
    training result, and the same job always evaluates the same examples (also after a resume).
    """
    if size >= n_examples:
        return list(range(n_examples))
    rng = np.random.default_rng([seed % 2**64, VALIDATION_SAMPLE_STREAM])
    return sorted(int(i) for i in rng.choice(n_examples, size=size, replace=False))


def micro_batches(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
