"""Chat messages → prompt token ids, with the model's own chat template."""

from __future__ import annotations

from typing import Any

import jinja2
from transformers import PreTrainedTokenizerBase

from openft.datasets.template import TemplateLimitError, render_chat
from openft.datasets.toolcalls import template_renders_tool_calls, with_tool_calls_for_template
from openft.errors import InvalidRequest


def render_prompt(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
) -> list[int]:
    """Render `messages` (and `tools`, for templates that describe them) ending with the assistant's turn.

    The template already writes any BOS or special tokens, so the text is encoded without adding more.
    Earlier assistant tool calls are rendered as the trainer renders them (as JSON lines in the content
    when the template cannot print `tool_calls`), so the model sees the format it was fine-tuned on.
    Template errors (e.g. "roles must alternate") are the client's to fix, hence InvalidRequest; so is a
    conversation on which the template passes its output or time limit (`openft.datasets.template`).
    """
    if tokenizer.chat_template is None:
        raise InvalidRequest("This model has no chat template, so it cannot answer chat messages.", param="model")
    native = template_renders_tool_calls(tokenizer)
    try:
        text = render_chat(
            tokenizer,
            [with_tool_calls_for_template(_with_text_content(m), native_tool_calls=native) for m in messages],
            tools=tools,
            add_generation_prompt=True,
        ).text
    except TemplateLimitError as exc:
        message = f"This model's chat template cannot render these messages: {exc}"
        raise InvalidRequest(message, param="messages") from exc
    except (jinja2.TemplateError, TypeError, KeyError, ValueError, OverflowError) as exc:
        # TypeError & co.: templates that index or concatenate what a message lacks (content None, no name)
        raise InvalidRequest(f"The messages do not fit this model's chat template: {exc}", param="messages") from exc
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _with_text_content(message: dict[str, Any]) -> dict[str, Any]:
    """Flatten OpenAI content parts to the plain string chat templates expect.

    Text parts are joined with newlines (as vLLM does); other parts (images, audio) are refused, since
    the models served here are text-only.
    """
    content = message.get("content")
    if content is None or isinstance(content, str):
        return message
    if isinstance(content, list):
        texts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise InvalidRequest(f"Only text content parts are supported, got {kind!r}.", param="messages")
            texts.append(part["text"])
        return {**message, "content": "\n".join(texts)}
    raise InvalidRequest("Message content must be a string or a list of content parts.", param="messages")
