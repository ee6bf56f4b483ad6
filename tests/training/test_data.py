"""Tokenization and loss masks: only trainable assistant replies (and their end-of-turn) are learned."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from openft.datasets.chat import ChatExample, DataFormatError, parse_example
from openft.training.data import (
    epoch_order,
    micro_batches,
    prepare,
    prepare_pairs,
    template_messages,
    tokenize_example,
    validation_sample,
)
from openft.training.recipe import linear_schedule
from tests.training.conftest import TOOL_TEMPLATE, chat_lines, preference_lines

END = "<|im_end|>\n"


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def example(obj: dict[str, Any], line: int = 1) -> ChatExample:
    parsed, problems = parse_example(obj, line)
    assert parsed is not None, problems
    return parsed


def targets_text(tokenizer: Any, tokenized: Any) -> str:
    ids = [t for t, m in zip(tokenized.input_ids, tokenized.target_mask, strict=True) if m]
    return tokenizer.decode(ids, skip_special_tokens=False)


def test_only_the_reply_and_its_end_of_turn_are_targets(tokenizer: Any) -> None:
    ex = example({"messages": [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Hi there."}]})
    tokenized, truncated = tokenize_example(tokenizer, ex, max_seq_len=512)
    assert not truncated
    assert targets_text(tokenizer, tokenized) == "Hi there." + END
    full = tokenizer.decode(tokenized.input_ids, skip_special_tokens=False)
    assert full == tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Hi there."}], tokenize=False
    )
    assert tokenized.n_targets == sum(tokenized.target_mask)


def test_weight_zero_replies_are_context_only(tokenizer: Any) -> None:
    ex = example(
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "One?"},
                {"role": "assistant", "content": "Wrong answer.", "weight": 0},
                {"role": "user", "content": "Two?"},
                {"role": "assistant", "content": "Right answer."},
                {"role": "user", "content": "Three?"},
                {"role": "assistant", "content": "Also right."},
                {"role": "user", "content": "Trailing question, never learned from."},
            ]
        }
    )
    tokenized, _ = tokenize_example(tokenizer, ex, max_seq_len=512)
    assert targets_text(tokenizer, tokenized) == "Right answer." + END + "Also right." + END
    decoded = tokenizer.decode(tokenized.input_ids, skip_special_tokens=False)
    assert "Wrong answer." in decoded and "Trailing question" not in decoded


def test_tool_calls_become_json_text_when_the_template_cannot_print_them(tokenizer: Any) -> None:
    (line,) = [x for x in chat_lines(4) if "tools" in x]
    tokenized, _ = tokenize_example(tokenizer, example(line), max_seq_len=512)
    learned = targets_text(tokenizer, tokenized)
    assert learned == '{"name": "get_weather", "arguments": {"city": "Paris"}}' + END + "It is sunny in Paris." + END
    assert "sunny" + END in tokenizer.decode(tokenized.input_ids, skip_special_tokens=False)  # the tool result


def test_templates_that_know_tool_calls_get_them_natively_with_tools(tokenizer: Any) -> None:
    from transformers import AutoTokenizer

    own = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    own.chat_template = TOOL_TEMPLATE
    (line,) = [x for x in chat_lines(4) if "tools" in x]
    tokenized, _ = tokenize_example(own, example(line), max_seq_len=512)
    full = own.decode(tokenized.input_ids, skip_special_tokens=False)
    assert full.startswith("<|im_start|>system\nTools: get_weather<|im_end|>")
    assert targets_text(own, tokenized).startswith('<call>get_weather {"city": "Paris"}</call>' + END)
    assert '"name"' not in full  # not also appended as text


def test_template_messages_drop_weight_and_fill_empty_content() -> None:
    messages = [{"role": "assistant", "content": None, "weight": 1, "tool_calls": [{"function": {"name": "f"}}]}]
    assert template_messages(messages, native_tool_calls=False) == [
        {"role": "assistant", "content": '{"name": "f", "arguments": ""}'}
    ]


def test_a_template_that_rewrites_earlier_turns_falls_back_to_the_common_prefix(tokenizer: Any) -> None:
    """This template marks the last message, so rendering more messages changes earlier text."""
    from transformers import AutoTokenizer

    own = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    own.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
        "{% if loop.last and not add_generation_prompt %} (last){% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    ex = example(
        {
            "messages": [
                {"role": "user", "content": "One?"},
                {"role": "assistant", "content": "Yes."},
                {"role": "user", "content": "Two?"},
                {"role": "assistant", "content": "No."},
            ]
        }
    )
    tokenized, _ = tokenize_example(own, ex, max_seq_len=512)
    learned = targets_text(own, tokenized)
    assert learned.startswith("Yes.") and learned.endswith("No. (last)" + END)
    assert "One?" not in learned and "Two?" not in learned


def test_template_errors_name_the_line(tokenizer: Any) -> None:
    from transformers import AutoTokenizer

    own = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    own.chat_template = "{{ raise_exception('roles must alternate') }}"
    ex = example({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}, line=7)
    with pytest.raises(DataFormatError) as caught:
        tokenize_example(own, ex, max_seq_len=512)
    assert caught.value.problem.line == 7 and "roles must alternate" in str(caught.value)


def test_truncation_and_skipping(tokenizer: Any) -> None:
    short = example({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}, 1)
    long_reply = example(
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "word " * 100}]}, 2
    )
    late_reply = example(
        {"messages": [{"role": "user", "content": "word " * 100}, {"role": "assistant", "content": "Hello."}]}, 3
    )
    prepared = prepare(tokenizer, [short, long_reply, late_reply], max_seq_len=40)
    assert prepared.truncated_lines == [2, 3]
    assert prepared.skipped_lines == [3]
    assert [e.line for e in prepared.examples] == [1, 2]
    assert len(prepared.examples[1].input_ids) == 40 and prepared.examples[1].n_targets > 0


def test_epoch_order_depends_only_on_seed_and_epoch() -> None:
    first = epoch_order(7, 0, 10)
    np.random.seed(123)  # the global generator must not matter
    assert epoch_order(7, 0, 10) == first
    assert sorted(first) == list(range(10))
    assert epoch_order(7, 1, 10) != first and epoch_order(8, 0, 10) != first


def test_micro_batches_keep_order_and_remainder() -> None:
    assert [list(b) for b in micro_batches([1, 2, 3, 4, 5], 2)] == [[1, 2], [3, 4], [5]]  # type: ignore[list-item]


def test_linear_schedule_warms_up_then_decays_to_zero() -> None:
    f = linear_schedule(2, 10)
    assert [f(s) for s in range(10)] == [0.5, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125]
    assert f(10) == 0.0
    assert linear_schedule(0, 4)(0) == 1.0


def test_validation_sample_is_fixed_by_the_seed_alone() -> None:
    first = validation_sample(7, 100, 10)
    np.random.seed(123)  # the global generators must not matter
    torch.manual_seed(5)
    assert validation_sample(7, 100, 10) == first
    assert first == sorted(set(first)) and len(first) == 10 and all(0 <= i < 100 for i in first)
    assert validation_sample(8, 100, 10) != first
    assert validation_sample(7, 4, 64) == [0, 1, 2, 3]  # a small file: all of it
    # Its own stream: not the first rows of an epoch order under the same seed.
    assert first != sorted(epoch_order(7, 0, 100)[:10])


def test_preference_pairs_train_on_the_answers_only(tokenizer: Any) -> None:
    from openft.datasets.preference import parse_preference_example

    (line,) = preference_lines(1, offset=2)  # a prompt with an earlier assistant turn
    pair, problems = parse_preference_example(line, 5)
    assert pair is not None, problems
    prepared = prepare_pairs(tokenizer, [pair], max_seq_len=512)
    (tokenized,) = prepared.examples
    assert tokenized.line == 5
    assert targets_text(tokenizer, tokenized.chosen) == line["preferred_output"][0]["content"] + END
    assert targets_text(tokenizer, tokenized.rejected) == line["non_preferred_output"][0]["content"] + END
    assert "Hi." in tokenizer.decode(tokenized.chosen.input_ids)  # the earlier turn is context, not a target
    short = prepare_pairs(tokenizer, [pair], max_seq_len=8)
    assert short.examples == [] and short.skipped_lines == [5] and short.truncated_lines == [5]
