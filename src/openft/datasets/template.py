"""Chat templates rendered in a sandbox with an output cap and a time limit.

A chat template is Jinja code chosen by whoever published the model (a Hub repository, or the
`tokenizer_config.json` of a models-dir folder), and it runs on every conversation the trainer, the data
check and inference render. transformers already renders it in Jinja's `ImmutableSandboxedEnvironment`
(no attribute escapes such as `''.__class__`), but nothing bounds what a template may *cost*:
`{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}` spins for hours and
`{% set ns.s = ns.s ~ ns.s %}` in a loop fills memory. So every render here goes through `render_chat`:

- **Output cap**: at most `MAX_OUTPUT_BASE_CHARS` + `MAX_OUTPUT_INPUT_FACTOR` × the conversation's own
  size (its messages and tools as JSON) characters. The output is consumed chunk by chunk from
  `Template.generate`, and strings built inside the template (`*`, `+`, attribute reads, call arguments) are
  held to the same cap, so no intermediate value grows past it either.
- **Time limit**: `MAX_RENDER_SECONDS` per render, checked at every loop iteration (each `{% for %}`
  iterable is wrapped while the template is compiled), every call, every attribute or item read and every
  output chunk: a template cannot run for long without passing one of those checks. No threads or signals,
  so it works in the API's worker threads as well as in the trainer.

Exceeding either raises `TemplateLimitError` (a `ValueError`): the trainer and the worker's validation
report it as an `invalid_file_format` problem of the example's line, the data check as a problem in its
report, inference as a 400.

The environment mirrors transformers' own (`trim_blocks`, `lstrip_blocks`, loop controls, `tojson`,
`raise_exception`, `strftime_now`, `dict`, an underscore-refusing `namespace`, a no-op `{% generation %}`
tag) and the arguments are prepared as `apply_chat_template` prepares them, so the text is the same
(tests compare both on the tiny model's and SmolLM2's templates).

`render_chat` can also report how far the output had got when the template first looked at each message
(`observe=True`): the trainer uses that to find every turn's boundary in a single render
(`openft.training.chat_encoding`).
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
import jinja2.visitor
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_OUTPUT_BASE_CHARS = 1024 * 1024
"""Every template may write this much (1 Mi characters) beyond what the conversation's size allows."""
MAX_OUTPUT_INPUT_FACTOR = 4
"""…plus this many characters per character of the conversation (messages and tools as JSON)."""
MAX_RENDER_SECONDS = 5.0
"""One render of one conversation stops with an error after this long."""
MAX_RANGE = 100_000
"""`range()` in a template gives at most this many numbers (the Jinja sandbox's own bound)."""
MAX_POWER_BITS = 1 << 16
"""`**` in a template may not compute a number longer than this (a huge power takes minutes)."""
_CHECK_EVERY = 256
"""Loop iterations between two clock reads."""
EMPTY_CONVERSATION = "Cannot apply chat template to an empty conversation. Provide at least one message."
"""transformers' words for a render of no messages (kept, so errors read the same as before)."""


class TemplateLimitError(ValueError):
    """The chat template wrote too much or ran too long."""


@dataclass
class _Budget:
    max_chars: int
    deadline: float
    written: int = 0

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise TemplateLimitError(
                f"the chat template ran longer than {MAX_RENDER_SECONDS:g} s on one conversation (the limit)"
            )

    def check_size(self, value: Any) -> None:
        if isinstance(value, str | list | tuple | dict):
            self.check_length(len(value))

    def check_length(self, length: int) -> None:
        if length > self.max_chars:
            raise TemplateLimitError(
                f"the chat template built a value of {length:,} items, more than its limit of "
                f"{self.max_chars:,} characters for this conversation"
            )


_renders = threading.local()
"""The budgets of the renders in progress on this thread (renders run in several API threads at once)."""


def _stack() -> list[_Budget]:
    stack = getattr(_renders, "stack", None)
    if stack is None:
        stack = _renders.stack = []
    return stack


def _budget() -> _Budget | None:
    stack = _stack()
    return stack[-1] if stack else None


class _LimitedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, with the clock and the size checks on calls, attribute reads and `*`/`+`/`**`."""

    intercepted_binops = frozenset({"*", "+", "**"})

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        if budget is not None:
            budget.check_time()
            for value in (*args, *kwargs.values()):
                budget.check_size(value)
        return super().call(__context, __obj, *args, **kwargs)

    def getattr(self, obj: Any, attribute: str) -> Any:
        return self._checked(super().getattr(obj, attribute))

    def getitem(self, obj: Any, argument: Any) -> Any:
        return self._checked(super().getitem(obj, argument))

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        budget = _budget()
        if (
            operator == "**"
            and isinstance(left, int)
            and isinstance(right, int)
            and abs(left) > 1
            and right * abs(left).bit_length() > MAX_POWER_BITS
        ):
            raise TemplateLimitError(f"the chat template computes a power of more than {MAX_POWER_BITS} bits")
        if budget is not None and operator == "*":
            count, sized = (right, left) if isinstance(right, int) else (left, right)
            if isinstance(count, int) and isinstance(sized, str | list | tuple):
                budget.check_length(len(sized) * count)
        value = super().call_binop(context, operator, left, right)
        return self._checked(value)

    @staticmethod
    def _checked(value: Any) -> Any:
        budget = _budget()
        if budget is not None:
            budget.check_time()
            budget.check_size(value)
        return value


def _bounded_iter(iterable: Any) -> Iterator[Any]:
    """Every `{% for %}` iterates through this: the clock is read every few iterations."""
    budget = _budget()
    for index, item in enumerate(iterable):
        if budget is not None and index % _CHECK_EVERY == 0:
            budget.check_time()
        yield item


def _limited_range(*args: int) -> range:
    rng = range(*args)
    if len(rng) > MAX_RANGE:
        raise TemplateLimitError(f"the chat template asks for a range of more than {MAX_RANGE} numbers")
    return rng


class _Generation(jinja2.ext.Extension):
    """`{% generation %}…{% endgeneration %}` (transformers' assistant-mask tag): renders its body unchanged."""

    def __init__(self, environment: jinja2.Environment):
        super().__init__(environment)
        self.tags = {"generation"}  # jinja2 declares `tags` per instance (and reads it from the instance)

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body, lineno=lineno)


class _Namespace(jinja2.utils.Namespace):
    """`namespace()` that refuses underscore names, as transformers' does (no reaching CPython internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _Namespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"a template namespace cannot hold underscore names ({name!r})")


class _TemplateDict:
    """`dict(...)` and `dict.fromkeys(...)` without exposing the `dict` type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class _ForIterWrapper(jinja2.visitor.NodeTransformer):
    """Wraps the iterable of every `{% for %}` in `_bounded_iter`, so every loop reads the clock."""

    def visit_For(self, node: jinja2.nodes.For) -> jinja2.nodes.For:
        self.generic_visit(node)
        node.iter = jinja2.nodes.Call(jinja2.nodes.Name("__openft_bounded", "load"), [node.iter], [], None, None)
        return node


@functools.lru_cache(maxsize=16)
def compile_template(source: str) -> jinja2.Template:
    """The template compiled in the limited sandbox (cached: the same model's template renders many times)."""
    environment = _LimitedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols, _Generation]
    )
    environment.filters["tojson"] = _tojson
    environment.globals.update(
        raise_exception=_raise_exception,
        strftime_now=_strftime_now,
        dict=_TemplateDict(),
        namespace=_Namespace,
        range=_limited_range,
        __openft_bounded=_bounded_iter,
    )
    tree = environment.parse(source)
    tree = _ForIterWrapper().visit(tree)
    return environment.from_string(tree)


def chat_template_of(tokenizer: Any, tools: Any) -> str:
    """The template `apply_chat_template` would use (a dict of templates picks `tool_use` when tools are given)."""
    return tokenizer.get_chat_template(None, tools)


@dataclass
class Rendered:
    text: str
    touched: list[int] = field(default_factory=list)
    """With `observe=True`: `touched[j]` is how many characters had been written when the template first
    looked at anything that tells `messages[:j]` from the whole list (message j itself, the list's length, a
    negative index…). Until then a render of `messages[:j]` runs exactly as this one, so `text[:touched[j]]`
    starts it too. `touched[len(messages)]` is the point the template learned the list ends (its length
    when it never did)."""


class _ObservedMessages(Sequence[Any]):
    """The messages as the template sees them, noting when each index is first looked at."""

    def __init__(self, items: list[Any], on_touch: Callable[[int], None]):
        self._items = items
        self._on_touch = on_touch

    def __len__(self) -> int:
        self._on_touch(len(self._items))
        return len(self._items)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, int) and 0 <= index < len(self._items):
            self._on_touch(index)
        else:  # negative indices and slices depend on the length
            self._on_touch(len(self._items))
        return self._items[index]

    def __iter__(self) -> Iterator[Any]:
        for index, item in enumerate(self._items):
            self._on_touch(index)
            yield item
        self._on_touch(len(self._items))

    def __reversed__(self) -> Iterator[Any]:
        self._on_touch(len(self._items))
        return reversed(self._items)


def _conversation_size(messages: Any, tools: Any) -> int:
    try:
        return len(json.dumps([messages, tools], ensure_ascii=False, default=str))
    except (TypeError, ValueError):
        return 0


def output_cap(messages: Any, tools: Any) -> int:
    """How many characters a render of this conversation may write."""
    return MAX_OUTPUT_BASE_CHARS + MAX_OUTPUT_INPUT_FACTOR * _conversation_size(messages, tools)


def render_chat(
    tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    *,
    tools: list[dict[str, Any]] | None = None,
    add_generation_prompt: bool = False,
    observe: bool = False,
) -> Rendered:
    """`tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, …)`, within the limits.

    Raises `TemplateLimitError` past a limit; the template's own errors (`jinja2.TemplateError`,
    `TypeError`, …) pass through as transformers would raise them.
    """
    from transformers.utils.chat_template_utils import (
        _alias_reasoning_fields,
        _normalize_chat_messages,
        _plain_template_data,
    )

    if not messages:
        raise ValueError(EMPTY_CONVERSATION)
    template = compile_template(chat_template_of(tokenizer, tools))
    chat = _alias_reasoning_fields(_plain_template_data(_normalize_chat_messages(list(messages))))
    tool_schemas = _plain_template_data(tools)
    kwargs = _plain_template_data(dict(tokenizer.special_tokens_map))
    budget = _Budget(output_cap(chat, tool_schemas), time.monotonic() + MAX_RENDER_SECONDS)
    touched: list[int] = []

    def on_touch(index: int) -> None:
        while len(touched) <= index:
            touched.append(budget.written)

    seen: Any = _ObservedMessages(chat, on_touch) if observe else chat
    stack = _stack()
    stack.append(budget)
    pieces: list[str] = []
    try:
        for piece in template.generate(
            messages=seen, tools=tool_schemas, documents=None, add_generation_prompt=add_generation_prompt, **kwargs
        ):
            budget.written += len(piece)
            if budget.written > budget.max_chars:
                raise TemplateLimitError(
                    f"the chat template wrote more than {budget.max_chars:,} characters for one conversation "
                    f"(the limit: {MAX_OUTPUT_BASE_CHARS:,} plus {MAX_OUTPUT_INPUT_FACTOR}× its size)"
                )
            budget.check_time()
            pieces.append(piece)
    finally:
        stack.pop()
    text = "".join(pieces)
    if observe:
        while len(touched) <= len(chat):
            touched.append(len(text))
    return Rendered(text, touched)
