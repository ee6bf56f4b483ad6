"""Tool calls as plain text: the format the trainer writes and inference reads back.

Many chat templates (SmolLM2's among them) print only a message's `content`, never its `tool_calls`.
For those the trainer appends each call to the assistant content as one JSON line
`{"name": …, "arguments": {…}}`, so the model learns to answer with such lines. Templates that know
about tools teach their models the Hermes/Qwen format, `<tool_call>{"name": …, "arguments": {…}}</tool_call>`.

This module is the format: its tags and how messages are rendered for a template (used by the trainer
and by inference's prompt). Reading calls back out of generated text is inference's business
(`openft.inference.toolcall_parser`, which takes the tags from here), so the two sides cannot drift apart.
Pure Python (no torch), like the rest of `openft.datasets`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

HERMES_OPEN = "<tool_call>"
HERMES_CLOSE = "</tool_call>"


def template_renders_tool_calls(tokenizer: Any) -> bool:
    """Does the chat template print `tool_calls` itself? (SmolLM2's, like many, only prints `content`.)"""
    return "tool_calls" in str(getattr(tokenizer, "chat_template", None) or "")


def arguments_for_template(raw: Any) -> Any:
    """OpenAI sends arguments as a JSON string; templates (and the text format) want the object."""
    if isinstance(raw, str):
        try:
            parsed = json.loads(raw)
        except ValueError:
            return raw
        return parsed if isinstance(parsed, dict) else raw
    return raw


def template_functions(tool_calls: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """`{"name", "arguments"}` of each OpenAI tool call, arguments as an object where they parse as one."""
    return [
        {"name": call["function"]["name"], "arguments": arguments_for_template(call["function"].get("arguments", ""))}
        for call in tool_calls
    ]


def render_tool_calls_as_text(content: str, tool_calls: Iterable[Mapping[str, Any]]) -> str:
    """The content followed by one JSON line per call: what the model sees and learns to write."""
    text = "\n".join(json.dumps(f, ensure_ascii=False) for f in template_functions(tool_calls))
    return f"{content}\n{text}" if content else text


def with_tool_calls_for_template(message: dict[str, Any], *, native_tool_calls: bool) -> dict[str, Any]:
    """`message` as chat templates take it: calls as objects for templates that print them, else as text.

    Used for the prompt at inference and for every message in training, so a conversation history
    with tool calls renders the same in both.
    """
    calls = message.get("tool_calls")
    if "tool_calls" not in message:
        return message
    out = {k: v for k, v in message.items() if k != "tool_calls"}  # an empty list is no calls at all
    if not calls:
        return out
    if native_tool_calls:
        functions = template_functions(calls)
        out["tool_calls"] = [{**c, "type": "function", "function": f} for c, f in zip(calls, functions, strict=True)]
    else:
        out["content"] = render_tool_calls_as_text(message.get("content") or "", calls)
    return out
