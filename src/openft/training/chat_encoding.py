"""A conversation → token ids + target mask, in time linear in its length (render once, mask by offsets).

The masking rule (`openft.training.data`) is defined with renders of prefixes: the targets of trainable
assistant message k run from where `render(messages[:k], add_generation_prompt=True)` and
`render(messages[:k+1])` stop agreeing (token by token) to where `render(messages[:k+1])` and the whole
conversation stop agreeing. Rendering and tokenizing every prefix costs turns² per example (a 130 KB file of
long conversations took over a minute), so this module computes the same tokens without those renders:

1. The conversation is rendered once (`openft.datasets.template.render_chat(observe=True)`), noting for
   every j how much text was written when the template first looked at message j (or at the list's
   length). Up to that point a render of `messages[:j]` is the same computation, so it starts with that text.
2. What a prefix render writes after that point (its "ending": the generation prompt, or whatever the
   template writes when the list ends) is measured on the first trainable turn by really rendering it, and
   checked on the last one; for ordinary templates it is the same for every turn. Each prefix render is
   then `text[:touched[j]] + ending` without rendering it.
3. Tokens: the whole text is tokenized once with offsets. A prefix render differs from it only after the
   last special token (`<|im_start|>`, …) before its end, and a fast tokenizer splits text at special
   tokens before anything else, so each prefix's tokens are the whole text's tokens up to that special
   token plus a small window tokenized on its own. The comparisons of the rule run on those windows.
   (A template without special tokens has windows that start `MAX_WINDOW_CHARS` back, at a token
   boundary of the whole text: exact for the byte-level BPE tokenizers tested, whose pre-tokenizer looks
   no further than the next character, and bounded for every tokenizer.)

Each step is exact, so the result is token for token what rendering every prefix gives (a test compares
both on many conversations with the tiny model's and SmolLM2's tokenizers). Where a template's ending
differs between turns (it rewrites earlier turns: system prompt moved to the last user message, reasoning
dropped from earlier replies…), or it looks at the whole list in ways that hide the turn boundaries, the
prefixes are really rendered, for at most `MAX_PREFIX_RENDERED_TURNS` trainable turns per example (beyond
that the example is refused with a clear problem, rather than cost turns² or be masked by guesswork).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

from openft.datasets.template import TemplateLimitError, render_chat

MAX_PREFIX_RENDERED_TURNS = 32
"""Trainable turns per example for templates that rewrite earlier turns (each costs two full renders)."""
MAX_WINDOW_CHARS = 8 * 1024
"""How far back a token window reaches for a special token; farther back it starts at an ordinary token."""


class TemplateRefused(Exception):
    """The template (or the encoder's limits) refuses this conversation; the message says why."""


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _render(tokenizer: Any, messages: list[dict[str, Any]], tools: Any, generation_prompt: bool) -> str:
    return render_chat(tokenizer, messages, tools=tools, add_generation_prompt=generation_prompt).text


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_conversation(
    tokenizer: Any, messages: list[dict[str, Any]], trainable: list[int], tools: Any
) -> tuple[list[int], list[bool]]:
    """Token ids of the conversation up to its last trainable message, and the target mask.

    `messages` are already in template shape (`template_messages`); `trainable` are the indices of the
    assistant messages with weight 1, ascending. Template errors propagate (the caller names the line).
    """
    if not trainable:
        full = _ids(tokenizer, _render(tokenizer, messages, tools, False))
        return full, [False] * len(full)
    upto = trainable[-1] + 1
    shown = messages[:upto]
    try:
        whole = render_chat(tokenizer, shown, tools=tools, observe=True)
    except TemplateLimitError:
        raise
    except Exception:  # e.g. `messages | tojson` on the observed list: render the plain way (its own errors)
        return _encode_by_prefixes(tokenizer, shown, trainable, tools)
    endings = _endings(tokenizer, shown, trainable, tools, whole.text, whole.touched)
    if endings is None or not getattr(tokenizer, "is_fast", False):
        return _encode_by_prefixes(tokenizer, shown, trainable, tools)
    with_prompt, at_end = endings
    return _encode_by_offsets(tokenizer, whole.text, whole.touched, trainable, with_prompt, at_end)


def _endings(
    tokenizer: Any, messages: list[dict[str, Any]], trainable: list[int], tools: Any, text: str, touched: list[int]
) -> tuple[str, str] | None:
    """(ending of a prefix render with the generation prompt, ending without it), or None when they vary."""
    at_end = text[touched[len(messages)] :]
    first, last = trainable[0], trainable[-1]
    endings = []
    for k in dict.fromkeys((first, last)):
        prompted = _render(tokenizer, messages[:k], tools, True)  # no messages (k = 0): the template's error
        if not prompted.startswith(text[: touched[k]]):
            return None
        endings.append(prompted[touched[k] :])
    if len(set(endings)) != 1:
        return None
    if first + 1 < len(messages):
        through = _render(tokenizer, messages[: first + 1], tools, False)
        if through != text[: touched[first + 1]] + at_end:
            return None
    return endings[0], at_end


def _encode_by_offsets(
    tokenizer: Any, text: str, touched: list[int], trainable: list[int], with_prompt: str, at_end: str
) -> tuple[list[int], list[bool]]:
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    full = list(encoding["input_ids"])
    offsets = encoding["offset_mapping"]
    special = set(tokenizer.all_special_ids)
    anchors = [(offsets[i][0], offsets[i][1], i) for i, token in enumerate(full) if token in special]
    starts = [start for start, _end in offsets]
    windows: list[tuple[int, str, str]] = []
    anchor_at = 0
    for k in trainable:
        before, through = touched[k], touched[k + 1]
        while anchor_at + 1 < len(anchors) and anchors[anchor_at + 1][1] <= before:
            anchor_at += 1
        start_char, index = 0, 0
        if anchors and anchors[anchor_at][1] <= before:
            start_char, _end, index = anchors[anchor_at]
        if before - start_char > MAX_WINDOW_CHARS:  # no special token nearby: start at an ordinary token
            index = bisect.bisect_left(starts, before - MAX_WINDOW_CHARS)
            start_char = starts[index] if index < len(starts) else before
        windows.append((index, text[start_char:before] + with_prompt, text[start_char:through] + at_end))
    batch = tokenizer([w for _, a, b in windows for w in (a, b)], add_special_tokens=False)["input_ids"]
    mask = [False] * len(full)
    for n, (index, _a, _b) in enumerate(windows):
        prompted, through = batch[2 * n], batch[2 * n + 1]
        start = index + common_prefix(prompted, through)
        end = index + common_prefix(through, full[index : index + len(through)])
        for position in range(start, end):
            mask[position] = True
    return full, mask


def _encode_by_prefixes(
    tokenizer: Any, messages: list[dict[str, Any]], trainable: list[int], tools: Any
) -> tuple[list[int], list[bool]]:
    """The rule as defined: two renders per trainable turn (templates whose endings vary between turns)."""
    full = _ids(tokenizer, _render(tokenizer, messages, tools, False))  # the template's own errors first
    if len(trainable) > MAX_PREFIX_RENDERED_TURNS:
        raise TemplateRefused(
            f"this model's chat template rewrites earlier turns (or reads the message list as a whole), so an "
            f"example may have at most "
            f"{MAX_PREFIX_RENDERED_TURNS} trained assistant messages (it has {len(trainable)}; split it, "
            "or give earlier replies weight 0)"
        )
    mask = [False] * len(full)
    for k in trainable:
        before = _ids(tokenizer, _render(tokenizer, messages[:k], tools, True))
        through = _ids(tokenizer, _render(tokenizer, messages[: k + 1], tools, False))
        for position in range(common_prefix(before, through), common_prefix(through, full)):
            mask[position] = True
    return full, mask
