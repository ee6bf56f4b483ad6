"""render_prompt: the model's chat template, tools, content parts, and template errors as client errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from openft.errors import InvalidRequest
from openft.inference.prompt import render_prompt


@pytest.fixture
def tokenizer(base_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(base_dir)


def test_renders_the_chat_template_with_the_assistant_turn_open(tokenizer: PreTrainedTokenizerBase) -> None:
    ids = render_prompt(tokenizer, [{"role": "user", "content": "Hello"}])
    assert tokenizer.decode(ids) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    )
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")  # no extra BOS in front


def test_tools_reach_the_template(tokenizer: PreTrainedTokenizerBase) -> None:
    tokenizer.chat_template = (
        "{% for tool in tools or [] %}[{{ tool['function']['name'] }}]{% endfor %}"
        "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    )
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    ids = render_prompt(tokenizer, [{"role": "user", "content": "Paris"}], tools=tools)
    assert tokenizer.decode(ids) == "[get_weather]Paris"


def test_content_parts_none_and_strings(tokenizer: PreTrainedTokenizerBase) -> None:
    tokenizer.chat_template = "{% for m in messages %}<{{ m['content'] or '' }}>{% endfor %}"
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": None, "tool_calls": []},
        {"role": "user", "content": "c"},
    ]
    assert tokenizer.decode(render_prompt(tokenizer, messages)) == "<a\nb><><c>"
    assert messages[0]["content"] == [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]  # not mutated


@pytest.mark.parametrize("content", [[{"type": "image_url", "image_url": {"url": "x"}}], ["text"], 42])
def test_non_text_content_is_refused(tokenizer: PreTrainedTokenizerBase, content: object) -> None:
    with pytest.raises(InvalidRequest) as info:
        render_prompt(tokenizer, [{"role": "user", "content": content}])
    assert info.value.param == "messages"


def test_template_errors_are_invalid_requests(tokenizer: PreTrainedTokenizerBase) -> None:
    tokenizer.chat_template = "{{ raise_exception('Conversation roles must alternate user/assistant') }}"
    with pytest.raises(InvalidRequest, match="roles must alternate") as info:
        render_prompt(tokenizer, [{"role": "user", "content": "x"}])
    assert info.value.param == "messages"


def test_model_without_a_chat_template_is_refused(tokenizer: PreTrainedTokenizerBase) -> None:
    tokenizer.chat_template = None
    with pytest.raises(InvalidRequest) as info:
        render_prompt(tokenizer, [{"role": "user", "content": "x"}])
    assert info.value.param == "model"
