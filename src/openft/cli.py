"""The `openft` command: a thin typer layer over the same code the server uses.

Server-side commands (serve, worker, train, export, keys, db) are here; the client commands that talk to a
server over HTTP (files, jobs, models, chat) and `data check` are in `openft.client`."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(help="openft: self-hosted fine-tuning with the OpenAI / Azure fine-tuning API.", no_args_is_help=True)
db_app = typer.Typer(help="Database administration.", no_args_is_help=True)
app.add_typer(db_app, name="db")
keys_app = typer.Typer(
    help="API keys of organizations and projects, kept hashed in the database (a running server honours "
    "new and revoked keys at once).",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")
orgs_app = typer.Typer(
    help="Organizations and their limits (running jobs, queued jobs, stored bytes), kept in the database.",
    no_args_is_help=True,
)
app.add_typer(orgs_app, name="orgs")
webhooks_app = typer.Typer(
    help="Webhook endpoints of organizations: job events (succeeded, failed, cancelled, paused) are POSTed to them, "
    "signed the Standard Webhooks way, from a durable outbox with retries.",
    no_args_is_help=True,
)
app.add_typer(webhooks_app, name="webhooks")


def _add_client_commands() -> None:
    """The client commands (files, jobs, models, chat, data) live in `openft.client`, one module each."""
    from openft.client import chat, data, files, jobs, models

    app.add_typer(files.app, name="files")
    app.add_typer(jobs.app, name="jobs")
    from openft.client import batches

    app.add_typer(batches.app, name="batches")
    app.add_typer(models.app, name="models")
    app.command("chat")(chat.chat)
    app.add_typer(data.app, name="data")
    from openft.client import importer  # `import` is a keyword: the module is `importer`, the command `import`

    app.add_typer(importer.app, name="import")


_add_client_commands()

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Data folder [env OPENFT_DATA_DIR, ./openft-data].")]
ModelsDir = Annotated[Path | None, typer.Option("--models-dir", help="Folder of base models [env OPENFT_MODELS_DIR].")]


def _settings(**overrides: Any) -> Any:
    from openft.settings import Settings

    return Settings(**{key: value for key, value in overrides.items() if value is not None})


@contextlib.contextmanager
def _data_folder_errors() -> Iterator[None]:
    """A data folder bound to another database (services/data_folder.py), or an object store that cannot be used
    (a missing bucket, no credentials), is one line and exit 1, not a traceback."""
    from openft.services.data_folder import DataFolderMismatch
    from openft.storage import StorageUnavailable

    try:
        yield
    except (DataFolderMismatch, StorageUnavailable) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


Executor = Annotated[
    str | None,
    typer.Option(
        "--executor",
        help="Where jobs run: local (subprocesses here) or ray (a Ray Train run per job) [env OPENFT_EXECUTOR, local].",
    ),
]
RayAddress = Annotated[
    str | None,
    typer.Option("--ray-address", help="Ray cluster of --executor ray (HOST:PORT or auto) [env OPENFT_RAY_ADDRESS]."),
]


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to listen on [127.0.0.1].")] = None,
    port: Annotated[int | None, typer.Option(help="Port [8000].")] = None,
    data_dir: DataDir = None,
    models_dir: ModelsDir = None,
    api_key: Annotated[
        str | None, typer.Option("--api-key", help="Key clients must send [env OPENFT_API_KEY; generated].")
    ] = None,
    no_worker: Annotated[bool, typer.Option("--no-worker", help="Serve the API only; run `openft worker`.")] = False,
    executor: Executor = None,
    ray_address: RayAddress = None,
) -> None:
    """Start the API server and (unless --no-worker) the worker that runs jobs, in one process.

    With --no-worker the server runs no trainers: `openft worker` processes on the same database and data
    folder do, finding new work by polling (OPENFT_WORKER_POLL_SECONDS)."""
    import uvicorn

    from openft.api.app import create_app
    from openft.services.container import build_container

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = _settings(
        host=host,
        port=port,
        data_dir=data_dir,
        models_dir=models_dir,
        api_key=api_key,
        run_worker=not no_worker or None,
        executor=executor,
        ray_address=ray_address,
    )
    if no_worker:
        settings.run_worker = False
    with _data_folder_errors():
        container = build_container(settings)
    typer.echo(f"openft serving on http://{settings.host}:{settings.port}  (OpenAI base_url: .../v1)")
    typer.echo(f"  data dir:   {settings.data_dir}")
    typer.echo(f"  database:   {settings.resolved_database_url.split('@')[-1]}")
    typer.echo(f"  models dir: {settings.models_dir or '(none; built-in models only)'}")
    if container.api_key_generated:
        typer.echo(f"  API key:    {container.api_key}  (generated; kept in {settings.key_file})")
    elif settings.api_key:
        typer.echo("  API key:    from --api-key / OPENFT_API_KEY")
    else:
        typer.echo(f"  API key:    in {settings.key_file}")
    where = f"running in this process ({settings.executor} executor)" if container.worker else "off (--no-worker)"
    typer.echo(f"  worker:     {where}")
    uvicorn.run(
        create_app(settings, container=container),
        host=settings.host,
        port=settings.port,
        log_level="info",
        timeout_graceful_shutdown=5,
    )


@app.command()
def worker(
    data_dir: DataDir = None,
    models_dir: ModelsDir = None,
    max_jobs: Annotated[
        int | None, typer.Option("--max-jobs", min=1, help="Training processes run at once [env OPENFT_MAX_JOBS, 1].")
    ] = None,
    worker_id: Annotated[
        str | None, typer.Option("--worker-id", help="Name in leases and events [host-pid-random].")
    ] = None,
    executor: Executor = None,
    ray_address: RayAddress = None,
) -> None:
    """Run jobs from the database (OPENFT_DATABASE_URL) and data folder a `serve --no-worker` server uses.

    Any number of workers may run. SIGTERM or Ctrl-C: every trainer checkpoints and its job goes back to
    the queue (a second Ctrl-C stops waiting for the checkpoints: the jobs continue from their last one).
    """
    import signal
    import threading

    from openft.services.workers import build_worker_process

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = _settings(
        data_dir=data_dir, models_dir=models_dir, max_jobs=max_jobs, executor=executor, ray_address=ray_address
    )
    with _data_folder_errors():
        process = build_worker_process(settings, worker_id=worker_id)
    stop, force = threading.Event(), threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        if stop.is_set():
            typer.echo("second stop signal: no longer waiting for checkpoints", err=True)
            force.set()
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    typer.echo(f"openft worker {process.worker.worker_id}")
    typer.echo(f"  data dir:   {settings.data_dir}")
    typer.echo(f"  database:   {settings.resolved_database_url.split('@')[-1]}")
    typer.echo(f"  models dir: {settings.models_dir or '(none; built-in models only)'}")
    typer.echo(f"  max jobs:   {settings.max_jobs}")
    where = f" (Ray cluster {settings.ray_address or 'auto'})" if settings.executor == "ray" else ""
    typer.echo(f"  executor:   {settings.executor}{where}")
    process.run_until(stop, force)
    typer.echo("worker stopped")


@app.command()
def train(
    job_file: Annotated[Path, typer.Argument(help="The job.json the worker wrote (see openft.trainer_contract).")],
) -> None:
    """Run one training job in this process: the exact command the worker starts."""
    from openft.training.entrypoint import run

    raise typer.Exit(run(job_file))


@app.command()
def export(
    model: Annotated[str, typer.Argument(help="A base model, a fine_tuned_model or a …:ckpt-step-N name.")],
    out: Annotated[Path, typer.Option("--out", help="New folder to write the Hugging Face model to.")],
    merged: Annotated[bool, typer.Option("--merged", help="Merge the LoRA adapter into the base weights.")] = False,
    data_dir: DataDir = None,
    models_dir: ModelsDir = None,
) -> None:
    """Write a model as a Hugging Face folder (the adapter, or merged into the base) that transformers loads."""
    from openft.errors import OpenFTError
    from openft.inference.export import export_weights
    from openft.services.container import build_container

    with _data_folder_errors():
        container = build_container(_settings(data_dir=data_dir, models_dir=models_dir), with_worker=False)
    try:
        target = container.models.target(None, model)  # whoever holds the data folder may export any model
        export_weights(target, out, merged=merged)
    except (OpenFTError, FileExistsError) as exc:
        typer.echo(f"error: {getattr(exc, 'message', exc)}", err=True)
        raise typer.Exit(1) from None
    finally:
        container.close()
    kind = (
        "base model"
        if target.adapter_path is None and target.full_model_path is None
        else ("merged model" if merged or target.adapter_path is None else "LoRA adapter")
    )
    typer.echo(f"exported {model} ({kind}) to {out}")


@db_app.command("upgrade")
def db_upgrade(data_dir: DataDir = None) -> None:
    """Apply the schema migrations to the database (serve does this on start)."""
    from openft.db.engine import make_engine
    from openft.db.migrate import upgrade

    settings = _settings(data_dir=data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(make_engine(settings.resolved_database_url))
    typer.echo("database is up to date")


JsonOutput = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
MaxRunningJobs = Annotated[
    int | None, typer.Option("--max-running-jobs", help="Organization limit: training jobs running at once.")
]
MaxQueuedJobs = Annotated[
    int | None,
    typer.Option("--max-queued-jobs", help="Organization limit: jobs waiting (validating or queued); more get 429."),
]
MaxStorageGb = Annotated[
    float | None,
    typer.Option(
        "--max-storage-gb", help="Organization limit: GB (10^9 bytes) of stored files; over it uploads get 429."
    ),
]


@contextlib.contextmanager
def _key_service(data_dir: Path | None) -> Iterator[Any]:
    """The key service on the database `openft serve` would use (`--data-dir` / `OPENFT_DATABASE_URL`),
    migrated first; without loading models or the worker, so the command is quick."""
    from openft.db.engine import make_engine, make_session_factory
    from openft.db.migrate import upgrade
    from openft.services.auth import KeyService

    settings = _settings(data_dir=data_dir)
    if settings.database_url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url)
    try:
        upgrade(engine)
        yield KeyService(make_session_factory(engine))
    finally:
        engine.dispose()


def _fail(exc: Any, as_json: bool) -> typer.Exit:
    """An error as one line on stderr, and with --json also the OpenAI-style envelope on stdout."""
    import json

    message = getattr(exc, "message", str(exc))
    if as_json:
        typer.echo(json.dumps({"error": {"message": message, "param": exc.param, "code": exc.code}}))
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


def _when(stamp: int | None) -> str:
    import datetime

    return "" if stamp is None else datetime.datetime.fromtimestamp(stamp, datetime.UTC).strftime("%Y-%m-%d %H:%M")


@keys_app.command("create")
def keys_create(
    org: Annotated[str, typer.Option("--org", help="Organization name (created on first use).")],
    project: Annotated[
        str | None, typer.Option("--project", help="Project name, recorded on what the key creates.")
    ] = None,
    admin: Annotated[bool, typer.Option("--admin", help="Sees and manages every organization's objects.")] = False,
    rate_limit: Annotated[
        int | None, typer.Option("--rate-limit", help="Requests per minute (per server process); none by default.")
    ] = None,
    max_running_jobs: MaxRunningJobs = None,
    max_queued_jobs: MaxQueuedJobs = None,
    max_storage_gb: MaxStorageGb = None,
    as_json: JsonOutput = False,
    data_dir: DataDir = None,
) -> None:
    """Create an API key; the key is printed once (only its SHA-256 is stored). The --max-… limits are set on
    the organization: they hold for all its keys (change them later with `openft orgs set-limits`)."""
    import json

    from openft.errors import OpenFTError
    from openft.services.quotas import limits_from_options

    try:
        limits = limits_from_options(max_running_jobs, max_queued_jobs, max_storage_gb)
        with _key_service(data_dir) as service:
            created = service.create(org, project=project, admin=admin, rate_limit_per_minute=rate_limit, limits=limits)
    except OpenFTError as exc:
        raise _fail(exc, as_json) from None
    if as_json:
        typer.echo(json.dumps(created.to_json()))
        return
    info = created.info
    details = [f"project {info.project}"] if info.project else []
    details += ["admin"] if info.admin else []
    details += [f"{info.rate_limit_per_minute} requests/minute"] if info.rate_limit_per_minute else []
    typer.echo(f"created {info.id} for organization {info.org}" + (f" ({', '.join(details)})" if details else ""))
    typer.echo(f"  {created.key}")
    typer.echo("  keep it now: it is not shown again (only its hash is stored)")


@keys_app.command("list")
def keys_list(
    org: Annotated[str | None, typer.Option("--org", help="Only this organization's keys.")] = None,
    active: Annotated[bool, typer.Option("--active", help="Leave out revoked keys.")] = False,
    as_json: JsonOutput = False,
    data_dir: DataDir = None,
) -> None:
    """List API keys (never the keys themselves: their first characters as `prefix`)."""
    import json

    from rich.console import Console
    from rich.table import Column, Table

    with _key_service(data_dir) as service:
        keys = service.list(org=org, include_revoked=not active)
    if as_json:
        typer.echo(json.dumps([key.to_json() for key in keys]))
        return
    table = Table(
        Column("id", no_wrap=True),
        "org",
        "project",
        "admin",
        Column("rate limit", no_wrap=True),
        Column("created (UTC)", no_wrap=True),
        Column("revoked (UTC)", no_wrap=True),
        Column("prefix", no_wrap=True),
    )
    for key in keys:
        table.add_row(
            key.id,
            key.org,
            key.project or "",
            "yes" if key.admin else "",
            f"{key.rate_limit_per_minute}/min" if key.rate_limit_per_minute else "",
            _when(key.created_at),
            _when(key.revoked_at),
            key.prefix + "…",
        )
    console = Console()
    if not console.is_terminal:  # piped: do not squeeze ids into 80 columns
        console = Console(width=200)
    console.print(table)
    typer.echo("(the server's own key, from --api-key / OPENFT_API_KEY / DATA_DIR/api_key, is not listed)")


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (key-…), as `openft keys list` shows it.")],
    as_json: JsonOutput = False,
    data_dir: DataDir = None,
) -> None:
    """Revoke an API key for good: a running server refuses it from its next request."""
    import json

    from openft.errors import OpenFTError

    try:
        with _key_service(data_dir) as service:
            info = service.revoke(key_id)
    except OpenFTError as exc:
        raise _fail(exc, as_json) from None
    if as_json:
        typer.echo(json.dumps(info.to_json()))
        return
    typer.echo(f"revoked {info.id} of organization {info.org} at {_when(info.revoked_at)} UTC")


@orgs_app.command("set-limits")
def orgs_set_limits(
    org: Annotated[str, typer.Argument(help="The organization's name.")],
    max_running_jobs: MaxRunningJobs = None,
    max_queued_jobs: MaxQueuedJobs = None,
    max_storage_gb: MaxStorageGb = None,
    unlimited: Annotated[
        list[str] | None,
        typer.Option("--unlimited", help="Remove a limit: running-jobs, queued-jobs or storage (repeatable)."),
    ] = None,
    as_json: JsonOutput = False,
    data_dir: DataDir = None,
) -> None:
    """Set an organization's limits (only those given change); a running server and its workers apply them at once."""
    import json

    from openft.errors import InvalidRequest, OpenFTError
    from openft.services.quotas import limits_from_options

    names = {"running-jobs": "max_running_jobs", "queued-jobs": "max_queued_jobs", "storage": "max_storage_bytes"}
    try:
        limits: dict[str, int | None] = limits_from_options(max_running_jobs, max_queued_jobs, max_storage_gb)
        for name in unlimited or []:
            if name not in names:
                raise InvalidRequest(f"--unlimited takes one of {', '.join(names)}, not {name!r}.", param="unlimited")
            limits[names[name]] = None
        if not limits:
            raise InvalidRequest("Give at least one limit to set (or --unlimited).", param="limits")
        with _key_service(data_dir) as service:
            result = service.set_organization_limits(org, limits)
    except OpenFTError as exc:
        raise _fail(exc, as_json) from None
    shown = {"org": org, **result.to_json()}
    typer.echo(
        json.dumps(shown) if as_json else "  ".join(f"{k}={'unlimited' if v is None else v}" for k, v in shown.items())
    )


@orgs_app.command("list")
def orgs_list(as_json: JsonOutput = False, data_dir: DataDir = None) -> None:
    """List organizations with their limits (unlimited where none is set)."""
    import json

    with _key_service(data_dir) as service:
        rows = service.organizations()
    if as_json:
        typer.echo(json.dumps(rows))
        return
    for row in rows:
        typer.echo("  ".join(f"{k}={'unlimited' if v is None else v}" for k, v in row.items()))


@contextlib.contextmanager
def _webhook_service(data_dir: Path | None) -> Iterator[Any]:
    """The webhook service on the database `openft serve` would use, migrated first (as `_key_service`)."""
    from openft.db.engine import make_engine, make_session_factory
    from openft.db.migrate import upgrade
    from openft.services.webhooks import WebhookService

    settings = _settings(data_dir=data_dir)
    if settings.database_url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url)
    try:
        upgrade(engine)
        yield WebhookService(make_session_factory(engine))
    finally:
        engine.dispose()


@webhooks_app.command("add")
def webhooks_add(
    url: Annotated[str, typer.Argument(help="The http(s) URL events are POSTed to.")],
    org: Annotated[str, typer.Option("--org", help="Organization whose job events it gets (created on first use).")],
    events: Annotated[
        str | None,
        typer.Option(
            "--events",
            help="Comma-separated event types [all: fine_tuning.job.succeeded,fine_tuning.job.failed,"
            "fine_tuning.job.cancelled,fine_tuning.job.paused].",
        ),
    ] = None,
    as_json: JsonOutput = False,
    data_dir: DataDir = None,
) -> None:
    """Add a webhook endpoint; its signing secret is printed once (receivers verify with it)."""
    import json

    from openft.errors import OpenFTError

    types = [name.strip() for name in events.split(",") if name.strip()] if events else None
    try:
        with _webhook_service(data_dir) as service:
            created = service.add(url, org=org, event_types=types)
    except OpenFTError as exc:
        raise _fail(exc, as_json) from None
    if as_json:
        typer.echo(json.dumps(created.to_json()))
        return
    info = created.info
    typer.echo(f"created {info.id} for organization {info.org}: {info.url}")
    typer.echo(f"  events: {', '.join(info.event_types)}")
    typer.echo(f"  secret: {created.secret}")
    typer.echo("  keep it now: it is not shown again (the receiver verifies signatures with it)")


@webhooks_app.command("list")
def webhooks_list(
    org: Annotated[str | None, typer.Option("--org", help="Only this organization's.")] = None,
    deliveries: Annotated[
        bool, typer.Option("--deliveries", help="List deliveries and their attempts instead (newest first).")
    ] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Deliveries shown at most.")] = 100,
    as_json: JsonOutput = False,
    data_dir: DataDir = None,
) -> None:
    """List webhook endpoints (never their secrets), or with --deliveries what was sent and how it went."""
    import json

    with _webhook_service(data_dir) as service:
        if deliveries:
            found = service.deliveries(org=org, limit=limit)
            if as_json:
                typer.echo(json.dumps([delivery.to_json() for delivery in found]))
                return
            for delivery in found:
                shown = delivery.to_json()
                last = shown["last_status_code"] or shown["last_error"] or ""
                typer.echo(
                    f"{shown['id']}  {shown['status']:<9}  {shown['event_type']:<26}  {shown['job_id']}  "
                    f"{shown['endpoint_id']}  tries={shown['attempt_count']}  {last}"
                )
            return
        endpoints = service.endpoints(org=org)
    if as_json:
        typer.echo(json.dumps([endpoint.to_json() for endpoint in endpoints]))
        return
    for endpoint in endpoints:
        typer.echo(
            f"{endpoint.id}  org={endpoint.org}  {endpoint.url}  events={','.join(endpoint.event_types)}  "
            f"created={_when(endpoint.created_at)}"
        )


@webhooks_app.command("delete")
def webhooks_delete(
    endpoint_id: Annotated[str, typer.Argument(help="The endpoint's id (wh-…), as `openft webhooks list` shows it.")],
    as_json: JsonOutput = False,
    data_dir: DataDir = None,
) -> None:
    """Delete a webhook endpoint: nothing more is sent to it (its pending deliveries and history go with it)."""
    import json

    from openft.errors import OpenFTError

    try:
        with _webhook_service(data_dir) as service:
            info = service.delete(endpoint_id)
    except OpenFTError as exc:
        raise _fail(exc, as_json) from None
    if as_json:
        typer.echo(json.dumps({**info.to_json(), "deleted": True}))
        return
    typer.echo(f"deleted {info.id} of organization {info.org} ({info.url})")


aliases_app = typer.Typer(
    help="Model aliases of organizations: other names (a retired vendor model, an Azure deployment) that answer for "
    "a base model, fine-tuned model or checkpoint wherever a model name is accepted.",
    no_args_is_help=True,
)
app.add_typer(aliases_app, name="aliases")
AliasOrg = Annotated[
    str | None, typer.Option("--org", help="The organization's name [default: the server's, OPENFT_ORG_NAME].")
]


@contextlib.contextmanager
def _alias_service(data_dir: Path | None, models_dir: Path | None) -> Iterator[Any]:
    """Aliases are checked against the models the server would see, so this opens the whole container (no
    worker, nothing started), as `openft export` does."""
    from openft.services.aliases import AliasService
    from openft.services.container import build_container

    with _data_folder_errors():
        container = build_container(_settings(data_dir=data_dir, models_dir=models_dir), with_worker=False)
    try:
        yield AliasService(container.sessions, container.models), container.settings.org_name
    finally:
        container.close()


@aliases_app.command("set")
def aliases_set(
    name: Annotated[str, typer.Argument(help="The alias, e.g. gpt-4o-mini-2024-07-18 or an Azure deployment name.")],
    target: Annotated[str, typer.Argument(help="A base model, fine_tuned_model, checkpoint name or ftckpt- id.")],
    org: AliasOrg = None,
    as_json: JsonOutput = False,
    data_dir: DataDir = None,
    models_dir: ModelsDir = None,
) -> None:
    """Create an alias, or point an existing one at another model; running servers use it at once."""
    import json

    from openft.errors import OpenFTError

    try:
        with _alias_service(data_dir, models_dir) as (service, default_org):
            info = service.set(org or default_org, name, target)
    except OpenFTError as exc:
        raise _fail(exc, as_json) from None
    typer.echo(json.dumps(info.to_json()) if as_json else f"{info.name} -> {info.target} (organization {info.org})")


@aliases_app.command("list")
def aliases_list(
    org: Annotated[str | None, typer.Option("--org", help="Only this organization's aliases.")] = None,
    as_json: JsonOutput = False,
    data_dir: DataDir = None,
    models_dir: ModelsDir = None,
) -> None:
    """List aliases (every organization's unless --org)."""
    import json

    from openft.errors import OpenFTError

    try:
        with _alias_service(data_dir, models_dir) as (service, _):
            infos = service.list(org)
    except OpenFTError as exc:
        raise _fail(exc, as_json) from None
    if as_json:
        typer.echo(json.dumps([info.to_json() for info in infos]))
        return
    for info in infos:
        typer.echo(f"{info.org}\t{info.name}\t{info.target}")


@aliases_app.command("delete")
def aliases_delete(
    name: Annotated[str, typer.Argument(help="The alias to delete (the model it names stays).")],
    org: AliasOrg = None,
    as_json: JsonOutput = False,
    data_dir: DataDir = None,
    models_dir: ModelsDir = None,
) -> None:
    """Delete an alias; requests that use it get 404 model_not_found from then on."""
    import json

    from openft.errors import OpenFTError

    try:
        with _alias_service(data_dir, models_dir) as (service, default_org):
            service.delete(org or default_org, name)
    except OpenFTError as exc:
        raise _fail(exc, as_json) from None
    typer.echo(json.dumps({"name": name, "deleted": True}) if as_json else f"deleted alias {name}")


def main() -> None:
    app()
