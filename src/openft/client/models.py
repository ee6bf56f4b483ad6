"""`openft models list`: base models, your fine-tuned models and their checkpoints (`GET /v1/models`)."""

from __future__ import annotations

import typer
from rich.table import Column, Table

from openft.client.connection import (
    ApiKeyOption,
    BaseUrlOption,
    JsonOption,
    api_errors,
    connect,
    console,
    print_json,
    when,
)

app = typer.Typer(help="The models you can fine-tune and chat with.", no_args_is_help=True)


@app.command("list")
def list_models(as_json: JsonOption = False, base_url: BaseUrlOption = None, api_key: ApiKeyOption = None) -> None:
    """List models: base models, succeeded fine-tunes and their checkpoints (each is callable)."""
    connection = connect(base_url, api_key)
    with api_errors(connection, as_json=as_json):
        models = list(connection.openai().models.list().data)
    if as_json:
        print_json(models)
        return
    table = Table(Column("id", no_wrap=True), "owned_by", Column("created (UTC)", no_wrap=True))
    for model in models:
        table.add_row(model.id, model.owned_by, when(model.created))
    console().print(table)
