"""`openft import openai|azure`: move a vendor's fine-tuning jobs onto openft.

For each of the vendor's jobs that pass the filters (`--status`, default succeeded; `--since`; `--id`), this
downloads its training and validation files with the official `openai` SDK, uploads them to openft and
creates an openft job on the mapped base with the same method, suffix, seed, metadata and hyperparameters
(rules in `import_plan.py`). The new job's metadata carries `openft_import_source` (`openai:<vendor job id>`)
and `openft_import_model` (the vendor's `fine_tuned_model`): the server creates the alias from the old name
to the new model when the job succeeds, so a client keeps calling the old model name; the importer finds
earlier imports by the source key (`GET /fine_tuning/jobs?metadata[openft_import_source]=…`), so running it
again never duplicates a job nor uploads its files again. `--dry-run` prints the plan and creates nothing.

Two connections: the vendor's (`--api-key`, `--base-url` for OpenAI; `--endpoint`, `--api-version` for
Azure) and openft's, resolved as every client command does (`OPENFT_BASE_URL`, `OPENFT_API_KEY`, or the
local server's key), here as `--openft-url` / `--openft-key` since the plain names are the vendor's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Annotated, Any

import typer

from openft.client.connection import Connection, api_errors, connect, console, fail, print_json, size
from openft.client.import_plan import (
    DEFAULT_MAP,
    LR_SCALE,
    SOURCE_KEY,
    TOKENS_PER_SECOND_7B,
    PlanError,
    PlannedJob,
    VendorFile,
    create_request,
    duration,
    import_source,
    parse_map,
    parse_since,
    plan_job,
)

app = typer.Typer(
    help="Import fine-tuning jobs from OpenAI or Azure OpenAI: their files, settings and model names.",
    no_args_is_help=True,
)

StatusOption = Annotated[
    list[str] | None,
    typer.Option("--status", help="Only vendor jobs with this status (repeatable; default: succeeded)."),
]
SinceOption = Annotated[
    str | None, typer.Option("--since", help="Only vendor jobs created at or after this date (or unix time).")
]
IdOption = Annotated[
    list[str] | None,
    typer.Option("--id", help="Only this vendor job (repeatable; any status unless --status is given)."),
]
MapOption = Annotated[
    list[str] | None,
    typer.Option(
        "--map",
        help="SRC=DST: vendor model (exact, or the longest prefix) → openft base (repeatable; adds to the default "
        "map: " + ", ".join(f"{k}={v}" for k, v in DEFAULT_MAP.items()) + ").",
    ),
]
LrScaleOption = Annotated[
    float,
    typer.Option(
        "--lr-scale", min=0.0, help="openft learning_rate_multiplier = the vendor's × this (OpenAI's default ≈ 2)."
    ),
]
DryRunOption = Annotated[bool, typer.Option("--dry-run", help="Print the plan (jobs, files, time); create nothing.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the plan and results as JSON.")]
OpenftUrlOption = Annotated[
    str | None,
    typer.Option(
        "--openft-url", envvar="OPENFT_BASE_URL", help="The openft server (env OPENFT_BASE_URL).", show_default=False
    ),
]
OpenftKeyOption = Annotated[
    str | None,
    typer.Option(
        "--openft-key",
        envvar="OPENFT_API_KEY",
        help="The openft key (env OPENFT_API_KEY; else a local server's DATA_DIR/api_key).",
        show_default=False,
    ),
]


@app.command("openai")
def import_openai(
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key", envvar="OPENAI_API_KEY", help="OpenAI's key (env OPENAI_API_KEY).", show_default=False
        ),
    ] = None,
    base_url: Annotated[
        str | None,
        typer.Option("--base-url", help="OpenAI's API URL (the SDK's default: https://api.openai.com/v1)."),
    ] = None,
    status: StatusOption = None,
    since: SinceOption = None,
    ids: IdOption = None,
    maps: MapOption = None,
    lr_scale: LrScaleOption = LR_SCALE,
    dry_run: DryRunOption = False,
    as_json: JsonOption = False,
    openft_url: OpenftUrlOption = None,
    openft_key: OpenftKeyOption = None,
) -> None:
    """Import OpenAI fine-tuning jobs (default: the succeeded ones) as openft jobs."""
    from openai import OpenAI

    if not api_key:
        fail("no OpenAI key: pass --api-key or set OPENAI_API_KEY", code="missing_api_key", as_json=as_json)
    vendor = OpenAI(api_key=api_key, base_url=base_url, max_retries=2)
    _run("openai", vendor, status, since, ids, maps, lr_scale, dry_run, as_json, openft_url, openft_key)


@app.command("azure")
def import_azure(
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="AZURE_OPENAI_API_KEY",
            help="The resource's key (env AZURE_OPENAI_API_KEY).",
            show_default=False,
        ),
    ] = None,
    endpoint: Annotated[
        str | None,
        typer.Option(
            "--endpoint",
            envvar="AZURE_OPENAI_ENDPOINT",
            help="https://<resource>.openai.azure.com (env AZURE_OPENAI_ENDPOINT).",
            show_default=False,
        ),
    ] = None,
    api_version: Annotated[str, typer.Option("--api-version", help="The Azure OpenAI API version.")] = (
        "2025-04-01-preview"
    ),
    status: StatusOption = None,
    since: SinceOption = None,
    ids: IdOption = None,
    maps: MapOption = None,
    lr_scale: LrScaleOption = LR_SCALE,
    dry_run: DryRunOption = False,
    as_json: JsonOption = False,
    openft_url: OpenftUrlOption = None,
    openft_key: OpenftKeyOption = None,
) -> None:
    """Import Azure OpenAI fine-tuning jobs (default: the succeeded ones) as openft jobs."""
    from openai import AzureOpenAI

    if not api_key:
        fail("no Azure key: pass --api-key or set AZURE_OPENAI_API_KEY", code="missing_api_key", as_json=as_json)
    if not endpoint:
        fail("no Azure endpoint: pass --endpoint or set AZURE_OPENAI_ENDPOINT", param="endpoint", as_json=as_json)
    vendor = AzureOpenAI(azure_endpoint=endpoint, api_key=api_key, api_version=api_version, max_retries=2)
    _run("azure", vendor, status, since, ids, maps, lr_scale, dry_run, as_json, openft_url, openft_key)


@contextlib.contextmanager
def vendor_errors(provider: str, vendor: Any, *, as_json: bool) -> Iterator[None]:
    """The vendor's errors as one line that names the vendor (openft's own go through `api_errors`)."""
    import openai

    where = f"{provider} at {vendor.base_url}"
    try:
        yield
    except openai.APIStatusError as exc:
        fail(f"{where}: {exc.message}", code=exc.code or "vendor_error", as_json=as_json)
    except openai.APIConnectionError as exc:
        fail(f"cannot reach {where} ({exc})", code="vendor_connection_error", as_json=as_json)
    except openai.APIError as exc:
        fail(f"{where}: {exc.message}", code=exc.code or "vendor_error", as_json=as_json)


def _run(
    provider: str,
    vendor: Any,
    status: list[str] | None,
    since: str | None,
    ids: list[str] | None,
    maps: list[str] | None,
    lr_scale: float,
    dry_run: bool,
    as_json: bool,
    openft_url: str | None,
    openft_key: str | None,
) -> None:
    try:
        mapping = parse_map(maps)
        since_at = parse_since(since) if since else None
    except PlanError as exc:
        fail(str(exc), as_json=as_json)
    if lr_scale <= 0:
        fail("--lr-scale must be above 0", param="lr-scale", as_json=as_json)
    statuses = set(status) if status else (None if ids else {"succeeded"})
    connection = connect(openft_url, openft_key)
    with vendor_errors(provider, vendor, as_json=as_json):
        jobs = vendor_jobs(vendor, ids=ids, statuses=statuses, since=since_at)
        files = vendor_files(vendor, jobs)
    with api_errors(connection, as_json=as_json):
        client = connection.openai()
        existing = existing_imports(client, [import_source(provider, str(job["id"])) for job in jobs])
        known = {model.id for model in client.models.list().data}
    plans = [
        plan_job(
            job,
            provider=provider,
            mapping=mapping,
            files=files,
            existing=existing,
            lr_scale=lr_scale,
            known_bases=known,
        )
        for job in jobs
    ]
    if dry_run:
        _report(plans, as_json=as_json, dry_run=True)
        raise typer.Exit(_exit_code(plans))
    failures = _execute(provider, vendor, connection, plans, as_json=as_json)
    _report(plans, as_json=as_json, dry_run=False)
    raise typer.Exit(1 if failures else _exit_code(plans))


def vendor_jobs(
    vendor: Any, *, ids: list[str] | None, statuses: set[str] | None, since: int | None
) -> list[dict[str, Any]]:
    """The vendor jobs to consider, oldest first (so a continued job's parent is imported before it)."""
    if ids:
        found = [vendor.fine_tuning.jobs.retrieve(job_id).to_dict(mode="json") for job_id in dict.fromkeys(ids)]
    else:
        found = []
        for job in vendor.fine_tuning.jobs.list(limit=100):  # the SDK pages on; newest first
            if since is not None and job.created_at < since:
                break
            found.append(job.to_dict(mode="json"))
    selected = [
        job
        for job in found
        if (statuses is None or job.get("status") in statuses) and (since is None or job.get("created_at", 0) >= since)
    ]
    if not ids:
        selected.reverse()  # the vendor lists newest first: reversed, jobs of the same second keep their order
    return sorted(selected, key=lambda job: job.get("created_at") or 0)  # stable


def vendor_files(vendor: Any, jobs: list[dict[str, Any]]) -> dict[str, VendorFile]:
    """The vendor's file objects the jobs name; a file it no longer has is left out (the job is then skipped)."""
    import openai

    found: dict[str, VendorFile] = {}
    for job in jobs:
        for file_id in (job.get("training_file"), job.get("validation_file")):
            if not file_id or file_id in found:
                continue
            try:
                item = vendor.files.retrieve(file_id)
            except openai.NotFoundError:
                continue
            found[file_id] = VendorFile(file_id, getattr(item, "filename", None), getattr(item, "bytes", None))
    return found


def existing_imports(client: Any, sources: list[str]) -> dict[str, str]:
    """openft jobs that already import these vendor jobs, by their `openft_import_source` (oldest wins)."""
    found: dict[str, str] = {}
    for source in dict.fromkeys(sources):
        jobs = list(client.fine_tuning.jobs.list(limit=100, metadata={SOURCE_KEY: source}))
        if jobs:
            found[source] = min(jobs, key=lambda job: (job.created_at, job.id)).id
    return found


def _execute(provider: str, vendor: Any, connection: Connection, plans: list[PlannedJob], *, as_json: bool) -> int:
    """Create the planned jobs; each failure is a line and the others go on. The number of failures."""
    import openai

    client = connection.openai()
    uploaded: dict[str, str] = {}  # vendor file id → openft file id (files shared by jobs upload once)
    failures = 0
    for planned in plans:
        if planned.action != "create":
            continue
        try:
            assert planned.training_file is not None
            training = _copy_file(vendor, client, planned.training_file, uploaded)
            validation = (
                _copy_file(vendor, client, planned.validation_file, uploaded) if planned.validation_file else None
            )
            body = create_request(planned, training, validation)
            created = client.fine_tuning.jobs.create(**body)
        except openai.APIError as exc:
            failures += 1
            planned.action, planned.reason = "failed", str(getattr(exc, "message", exc))
            if not as_json:
                typer.echo(f"error: {planned.vendor_job_id}: {planned.reason}", err=True)
            continue
        planned.openft_job = created.id
    return failures


def _copy_file(vendor: Any, client: Any, item: VendorFile, uploaded: dict[str, str]) -> str:
    """Download a vendor file and upload the same bytes, under the same name, to openft.

    The bytes pass through a temporary file, not memory: OpenAI's training files go up to 512 MB.
    """
    import tempfile

    if item.id not in uploaded:
        with tempfile.TemporaryFile() as spool:
            with vendor.files.with_streaming_response.content(item.id) as response:
                for chunk in response.iter_bytes(1 << 20):
                    spool.write(chunk)
            spool.seek(0)
            name = item.filename or f"{item.id}.jsonl"
            uploaded[item.id] = client.files.create(file=(name, spool), purpose="fine-tune").id
    return uploaded[item.id]


def _exit_code(plans: list[PlannedJob]) -> int:
    """1 when vendor jobs were found but none could be planned (all skipped for a problem); else 0."""
    if not plans:
        return 0
    usable = [p for p in plans if p.action == "create" or p.existing_job]
    return 0 if usable else 1


def _files_text(planned: PlannedJob) -> str:
    parts = []
    for label, item in (("train", planned.training_file), ("valid", planned.validation_file)):
        if item is not None:
            parts.append(f"{label} {item.filename or item.id} ({size(item.bytes) or '?'})")
    return "; ".join(parts)


def _report(plans: list[PlannedJob], *, as_json: bool, dry_run: bool) -> None:
    if as_json:
        print_json({"dry_run": dry_run, "jobs": [planned.to_json() for planned in plans]})
        return
    if not plans:
        typer.echo("no vendor jobs matched (default filter: --status succeeded)")
        return
    from rich.table import Column, Table

    table = Table(
        Column("vendor job", no_wrap=True),
        "vendor model → openft base",
        "files",
        Column("est. time*", no_wrap=True),
        "action",
        title="import plan (dry run: nothing created)" if dry_run else None,
    )
    total = 0.0
    for planned in plans:
        est = planned.estimate
        if planned.action == "create" and est and est.seconds:
            total += est.seconds
        if planned.openft_job:
            action = f"created {planned.openft_job}"
        elif planned.action == "create":
            action = "create"
        else:
            action = f"{planned.action}: {planned.reason}"
        table.add_row(
            planned.vendor_job_id,
            f"{planned.vendor_model} → {planned.base}" if planned.base else planned.vendor_model,
            _files_text(planned),
            f"{duration(est.seconds)} ({est.tokens:,} tokens)"
            if est and est.tokens is not None and planned.action == "create"
            else "",
            action,
        )
    console().print(table)
    for planned in plans:
        for note in planned.notes:
            typer.echo(f"note: {planned.vendor_job_id}: {note}")
    if any(p.estimate for p in plans):
        typer.echo(
            f"* an estimate: tokens (the vendor's trained_tokens, else file bytes / 4 × epochs) ÷ an assumed "
            f"LoRA throughput ({TOKENS_PER_SECOND_7B:,.0f} tokens/s for a 7–8B model on one H100-class GPU, scaled "
            f"by the size in the base's name); total {duration(total)}"
        )
    created = [p for p in plans if p.openft_job]
    if created and not dry_run:
        typer.echo(
            f"created {len(created)} job(s); when each succeeds the server points the old model name at the new "
            "model (openft jobs follow <id> to watch)"
        )
