"""`openft chat MODEL`: talk to a model in the terminal, the reply streamed as it is generated.

Interactive by default (each line you type is a turn; the conversation is kept; an empty line, `/exit`,
Ctrl-D or Ctrl-C ends it). `--message TEXT` sends one message and prints the reply, for scripts; with
`--json` that reply is the whole chat completion object.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from openft.client.connection import ApiKeyOption, BaseUrlOption, JsonOption, api_errors, connect, print_json

EXIT_WORDS = ("/exit", "/quit")


def chat(
    model: Annotated[str, typer.Argument(help="A base model, a fine_tuned_model (ft:…) or a checkpoint.")],
    system: Annotated[str | None, typer.Option("--system", help="A system message opening the conversation.")] = None,
    message: Annotated[str | None, typer.Option("--message", "-m", help="Send this one message and exit.")] = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", min=1, help="Longest reply (512).")] = None,
    temperature: Annotated[float | None, typer.Option("--temperature", min=0.0, help="0: greedy (1).")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Same seed, same reply.")] = None,
    as_json: JsonOption = False,
    base_url: BaseUrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Chat with a model (`POST /v1/chat/completions`, streamed)."""
    from openai import NOT_GIVEN

    connection = connect(base_url, api_key)
    client = connection.openai()
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    options: dict[str, Any] = {
        "max_tokens": max_tokens if max_tokens is not None else NOT_GIVEN,
        "temperature": temperature if temperature is not None else NOT_GIVEN,
        "seed": seed if seed is not None else NOT_GIVEN,
    }
    with api_errors(connection, as_json=as_json):
        if message is not None:
            messages.append({"role": "user", "content": message})
            if as_json:
                print_json(client.chat.completions.create(model=model, messages=messages, **options))
            else:
                _stream(client, model, messages, options)
            return
        interactive = typer.get_text_stream("stdin").isatty()
        if interactive:
            typer.echo(f"chatting with {model}; an empty line, /exit or Ctrl-D ends", err=True)
        while True:
            try:
                text = input("you> " if interactive else "")
            except (EOFError, KeyboardInterrupt):
                break
            if not text.strip() or text.strip() in EXIT_WORDS:
                break
            messages.append({"role": "user", "content": text})
            reply = _stream(client, model, messages, options, prefix="model> " if interactive else "")
            messages.append({"role": "assistant", "content": reply})


def _stream(client: Any, model: str, messages: list[dict[str, Any]], options: dict[str, Any], prefix: str = "") -> str:
    """Print the reply as it streams in; returns it whole (for the conversation's next turn)."""
    parts: list[str] = []
    if prefix:
        typer.echo(prefix, nl=False)
    try:
        for chunk in client.chat.completions.create(model=model, messages=messages, stream=True, **options):
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
                typer.echo(chunk.choices[0].delta.content, nl=False)
    except KeyboardInterrupt:
        typer.echo(" [interrupted]", nl=False)
    typer.echo("")
    return "".join(parts)
