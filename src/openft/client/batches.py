"""`openft batches create|get|list|cancel|follow`: the Batch API (`/v1/batches`).

A batch is answered by the server's workers in the background, so `create` returns at once and `follow`
polls until the batch reaches a terminal status; its exit code tells a script whether every line ran.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from openft.client.connection import (
    ApiKeyOption,
    BaseUrlOption,
    JsonOption,
    api_errors,
    connect,
    console,
    fail,
    print_json,
    when,
)
from openft.client.jobs import parse_metadata

app = typer.Typer(help="Run many requests in the background with the Batch API.", no_args_is_help=True)
BatchId = Annotated[str, typer.Argument(help="The batch's id (batch_…).")]

TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
"""The statuses a batch never leaves (`cancelling` is not one: the workers still finish their lines)."""


def counts_text(batch: Any) -> str:
    """`2/3 done, 0 failed`: the batch's request_counts (all zero until its input file is validated)."""
    counts = batch.request_counts
    if counts is None:
        return ""
    return f"{counts.completed}/{counts.total} done, {counts.failed} failed"


def input_file_id(client: Any, file_or_id: str) -> str:
    """A local file is uploaded (purpose `batch`) and its new id used; otherwise `file-…` is taken as an id.

    A path wins over an id of the same spelling, so a file that happens to be named `file-x` is not mistaken
    for an uploaded one; anything else is a missing file, reported as such rather than sent as a bad id.
    """
    path = Path(file_or_id)
    if path.is_file():
        with open(path, "rb") as handle:
            return str(client.files.create(file=(path.name, handle), purpose="batch").id)
    if file_or_id.startswith("file-"):
        return file_or_id
    fail(f"no such file: {file_or_id} (and not a file id: those start with file-)", code="file_not_found")


@app.command("create")
def create(
    file_or_id: Annotated[str, typer.Argument(help="A local .jsonl of requests (uploaded first), or a file-… id.")],
    endpoint: Annotated[
        str, typer.Option("--endpoint", help="The endpoint every line calls, e.g. /v1/chat/completions.")
    ],
    metadata: Annotated[list[str] | None, typer.Option("--metadata", help="key=value (repeat for more pairs).")] = None,
    as_json: JsonOption = False,
    base_url: BaseUrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Create a batch (`POST /v1/batches`, completion_window 24h)."""
    from openai import NOT_GIVEN

    pairs = parse_metadata(metadata)
    connection = connect(base_url, api_key)
    with api_errors(connection, as_json=as_json):
        client = connection.openai()
        file_id = input_file_id(client, file_or_id)
        batch = client.batches.create(
            input_file_id=file_id, endpoint=endpoint, completion_window="24h", metadata=pairs or NOT_GIVEN
        )
    if as_json:
        print_json(batch)
        return
    typer.echo(f"created {batch.id} ({batch.status}) for {batch.endpoint} from {file_id}")
    typer.echo(f"  follow it with: openft batches follow {batch.id}")


@app.command("list")
def list_batches(
    limit: Annotated[int, typer.Option("--limit", min=1, max=100, help="At most this many (newest first).")] = 20,
    as_json: JsonOption = False,
    base_url: BaseUrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """List batches, newest first (`GET /v1/batches`)."""
    from rich.table import Column, Table

    connection = connect(base_url, api_key)
    with api_errors(connection, as_json=as_json):
        batches = list(connection.openai().batches.list(limit=limit).data)
    if as_json:
        print_json(batches)
        return
    table = Table(
        Column("id", no_wrap=True),
        "endpoint",
        "status",
        Column("requests", no_wrap=True),
        Column("output_file_id", no_wrap=True),
        Column("created (UTC)", no_wrap=True),
    )
    for batch in batches:
        table.add_row(
            batch.id,
            batch.endpoint,
            batch.status,
            counts_text(batch),
            batch.output_file_id or "",
            when(batch.created_at),
        )
    console().print(table)


def print_batch(batch: Any) -> None:
    rows: list[tuple[str, Any]] = [
        ("id", batch.id),
        ("status", batch.status),
        ("requests", counts_text(batch)),
        ("endpoint", batch.endpoint),
        ("input_file_id", batch.input_file_id),
        ("output_file_id", batch.output_file_id or ""),
        ("error_file_id", batch.error_file_id or ""),
        ("created", when(batch.created_at) + " UTC"),
        ("expires", when(batch.expires_at) + (" UTC" if batch.expires_at else "")),
        ("completed", when(batch.completed_at) + (" UTC" if batch.completed_at else "")),
        ("metadata", ", ".join(f"{k}={v}" for k, v in (batch.metadata or {}).items())),
    ]
    for error in (batch.errors.data or []) if batch.errors else []:
        rows.append(("error", f"{error.message} (line: {error.line}, param: {error.param}, code: {error.code})"))
    for name, value in rows:
        typer.echo(f"{name + ':':16} {value}")


@app.command("get")
def get(
    batch_id: BatchId, as_json: JsonOption = False, base_url: BaseUrlOption = None, api_key: ApiKeyOption = None
) -> None:
    """Show one batch (`GET /v1/batches/{id}`)."""
    connection = connect(base_url, api_key)
    with api_errors(connection, as_json=as_json):
        batch = connection.openai().batches.retrieve(batch_id)
    if as_json:
        print_json(batch)
        return
    print_batch(batch)


@app.command("cancel")
def cancel(
    batch_id: BatchId, as_json: JsonOption = False, base_url: BaseUrlOption = None, api_key: ApiKeyOption = None
) -> None:
    """Cancel a batch (`POST /v1/batches/{id}/cancel`): `cancelling`, then `cancelled` with what was answered."""
    connection = connect(base_url, api_key)
    with api_errors(connection, as_json=as_json):
        batch = connection.openai().batches.cancel(batch_id)
    if as_json:
        print_json(batch)
        return
    typer.echo(f"{batch.id}: {batch.status}")


@app.command("follow")
def follow(
    batch_id: BatchId,
    interval: Annotated[float, typer.Option("--interval", min=0.1, help="Seconds between polls.")] = 1.0,
    as_json: JsonOption = False,
    base_url: BaseUrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Watch a batch until it ends, printing its status and request counts each time they change.

    Exit code: 0 completed; 1 failed, expired or cancelled (or an error); 130 on Ctrl-C, which stops
    following, not the batch. With --json, each change is the batch as one JSON line, the last one final.
    """
    connection = connect(base_url, api_key)
    client = connection.openai()
    shown: tuple[str, str] | None = None
    try:
        while True:
            with api_errors(connection, as_json=as_json):
                batch = client.batches.retrieve(batch_id)
            state = (batch.status, counts_text(batch))
            if state != shown:
                shown = state
                if as_json:
                    print_json(batch)
                else:
                    typer.echo(f"{batch.status}  {state[1]}".rstrip())
            if batch.status in TERMINAL:
                break
            time.sleep(interval)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    if not as_json and batch.status == "completed" and batch.output_file_id:
        typer.echo(f"  results: openft files download {batch.output_file_id} --out results.jsonl")
    raise typer.Exit(0 if batch.status == "completed" else 1)
