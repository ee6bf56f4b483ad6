"""`openft files upload|list|get|delete|download`: the Files API (`/v1/files`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from openft.client.connection import (
    ApiKeyOption,
    BaseUrlOption,
    JsonOption,
    api_errors,
    connect,
    console,
    existing_file,
    fail,
    print_json,
    size,
    when,
)

app = typer.Typer(
    help="Upload, list, inspect, download and delete files (training data, results).", no_args_is_help=True
)
FileId = Annotated[str, typer.Argument(help="The file's id (file-…).")]


@app.command("upload")
def upload(
    file: Annotated[Path, typer.Argument(help="The file to upload (JSONL for fine-tuning).")],
    purpose: Annotated[str, typer.Option("--purpose", help="What the file is for.")] = "fine-tune",
    as_json: JsonOption = False,
    base_url: BaseUrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Upload a file (`POST /v1/files`)."""
    existing_file(file)
    connection = connect(base_url, api_key)
    with api_errors(connection, as_json=as_json), open(file, "rb") as handle:
        created = connection.openai().files.create(file=(file.name, handle), purpose=purpose)
    if as_json:
        print_json(created)
        return
    typer.echo(f"uploaded {created.id}  {created.filename}  {size(created.bytes)}  purpose {created.purpose}")


@app.command("list")
def list_files(
    purpose: Annotated[str | None, typer.Option("--purpose", help="Only files with this purpose.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="At most this many (newest first).")] = None,
    as_json: JsonOption = False,
    base_url: BaseUrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """List files, newest first (`GET /v1/files`)."""
    from openai import NOT_GIVEN
    from rich.table import Column, Table

    connection = connect(base_url, api_key)
    with api_errors(connection, as_json=as_json):
        page = connection.openai().files.list(
            purpose=purpose if purpose is not None else NOT_GIVEN, limit=limit if limit is not None else NOT_GIVEN
        )
        files = list(page.data)
    if as_json:
        print_json(files)
        return
    table = Table(Column("id", no_wrap=True), "filename", "purpose", "bytes", Column("created (UTC)", no_wrap=True))
    for item in files:
        table.add_row(item.id, item.filename, item.purpose, size(item.bytes), when(item.created_at))
    console().print(table)


@app.command("get")
def get(
    file_id: FileId, as_json: JsonOption = False, base_url: BaseUrlOption = None, api_key: ApiKeyOption = None
) -> None:
    """Show one file (`GET /v1/files/{id}`)."""
    connection = connect(base_url, api_key)
    with api_errors(connection, as_json=as_json):
        item = connection.openai().files.retrieve(file_id)
    if as_json:
        print_json(item)
        return
    for name, value in (
        ("id", item.id),
        ("filename", item.filename),
        ("purpose", item.purpose),
        ("bytes", f"{item.bytes} ({size(item.bytes)})"),
        ("created", when(item.created_at) + " UTC"),
        ("expires", when(getattr(item, "expires_at", None)) or "never"),
    ):
        typer.echo(f"{name + ':':10} {value}")


@app.command("delete")
def delete(
    file_id: FileId, as_json: JsonOption = False, base_url: BaseUrlOption = None, api_key: ApiKeyOption = None
) -> None:
    """Delete a file (`DELETE /v1/files/{id}`); jobs that used it keep their own copy."""
    connection = connect(base_url, api_key)
    with api_errors(connection, as_json=as_json):
        deleted = connection.openai().files.delete(file_id)
    if as_json:
        print_json(deleted)
        return
    typer.echo(f"deleted {deleted.id}")


def download_name(server_name: str | None) -> str | None:
    """The server's name for a file as a name in the current folder, or None when nothing harmless is left.

    The name comes from the server (and first from whoever uploaded the file): only its last component
    is used, without control characters or leading dots, so `../x`, `/etc/x` or `.bashrc` can never
    make a download land outside the current folder or as a hidden file. `--out` is the way to choose
    another place.
    """
    name = (server_name or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip().lstrip(".").strip()
    return name or None


def _write_new(target: Path, data: bytes, *, force: bool) -> bool:
    """Write `data` to `target`; False (nothing written) when it exists and `force` is off.

    Without `force` the file is created exclusively (a dangling symlink counts as existing, so it is
    never followed); with it the data goes to a temp file that is renamed over `target`, replacing a
    symlink rather than writing where it points.
    """
    if not force:
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        return True
    tmp = target.with_name(f".{target.name}.openft-download")
    try:
        with open(tmp, "xb") as handle:
            handle.write(data)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return True


@app.command("download")
def download(
    file_id: FileId,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Where to write it ('-': stdout). Default: the file's name (its last part) in the current folder.",
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
    as_json: JsonOption = False,
    base_url: BaseUrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Download a file's content (`GET /v1/files/{id}/content`), e.g. a job's results.csv."""
    import sys

    connection = connect(base_url, api_key)
    client = connection.openai()
    with api_errors(connection, as_json=as_json):
        if out is not None and str(out) == "-":
            sys.stdout.buffer.write(client.files.content(file_id).content)
            sys.stdout.flush()
            return
        if out is not None:
            target = out
        else:
            server_name = client.files.retrieve(file_id).filename
            name = download_name(server_name)
            if name is None:
                problem = f"the file's name {server_name!r} is not a file name here; pass --out"
                fail(problem, param="out", as_json=as_json)
            target = Path(name)
        if target.exists() and not force:
            fail(f"{target} exists; pass --force to overwrite it", param="out", as_json=as_json)
        data = client.files.content(file_id).content
    if not _write_new(target, data, force=force):
        fail(f"{target} exists; pass --force to overwrite it", param="out", as_json=as_json)
    if as_json:
        print_json({"id": file_id, "path": str(target), "bytes": len(data)})
        return
    typer.echo(f"wrote {target} ({size(len(data))})")


@app.command("check")
def check(
    file_id: FileId,
    model: Annotated[str | None, typer.Option("--model", help="Base model (the server's default).")] = None,
    method: Annotated[str | None, typer.Option("--method", help="supervised, dpo (detected) or reinforcement.")] = None,
    mode: Annotated[
        str | None, typer.Option("--mode", help="The fine_tuning_mode the memory estimate is for (lora).")
    ] = None,
    as_json: JsonOption = False,
    base_url: BaseUrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Check an uploaded file as training data on the server (`GET /v1/files/{id}/check`, openft's extension).

    The same report as `openft data check`, with the time from the server's throughput table. Exit code:
    0 no problems, 1 problems found (or an error)."""
    from openft.client.connection import ServerError
    from openft.client.data import print_report

    connection = connect(base_url, api_key)
    asked = (("model", model), ("method", method), ("fine_tuning_mode", mode))
    params = {name: value for name, value in asked if value is not None}
    with api_errors(connection, as_json=as_json), connection.http() as http:
        response = http.get(f"files/{file_id}/check", params=params)
        if response.status_code != 200:
            raise ServerError(response)
        report = response.json()
    if as_json:
        print_json(report)
    else:
        print_report(report)
    raise typer.Exit(0 if report["ok"] else 1)
