"""`openft jobs create|list|get|events|checkpoints|pause|resume|cancel|follow`: the fine-tuning jobs API."""

from __future__ import annotations

import json
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

app = typer.Typer(help="Create, watch and control fine-tuning jobs.", no_args_is_help=True)
JobId = Annotated[str, typer.Argument(help="The job's id (ftjob-…).")]


def parse_metadata(pairs: list[str] | None) -> dict[str, str] | None:
    """`k=v` pairs (repeatable `--metadata`) as the API's metadata object."""
    if not pairs:
        return None
    metadata = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"--metadata takes key=value, got {pair!r}", param="metadata")
        metadata[key] = value
    return metadata


def job_steps(job: Any) -> tuple[int | None, int | None]:
    """The job's `completed_steps` and `total_steps`: openft's extension fields (docs/api-compatibility.md §4),
    which the SDK's `FineTuningJob` keeps as extra attributes; both null until the files are validated."""
    return getattr(job, "completed_steps", None), getattr(job, "total_steps", None)


def progress_text(job: Any) -> str:
    """`7/20 steps`, or "" while the plan is unknown (files not validated yet, or they failed)."""
    done, total = job_steps(job)
    return f"{done or 0}/{total} steps" if total is not None else ""


@app.command("create")
def create(
    model: Annotated[str, typer.Option("--model", help="A base model (or a fine-tuned one to continue).")],
    training_file: Annotated[str, typer.Option("--training-file", help="The uploaded training file's id.")],
    validation_file: Annotated[str | None, typer.Option("--validation-file", help="A validation file's id.")] = None,
    suffix: Annotated[str | None, typer.Option("--suffix", help="Part of the fine-tuned model's name.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Random seed (generated).")] = None,
    method: Annotated[str, typer.Option("--method", help="supervised, dpo or reinforcement.")] = "supervised",
    grader: Annotated[
        str | None, typer.Option("--grader", help="A reinforcement job's grader: a JSON file, or the JSON itself.")
    ] = None,
    n_epochs: Annotated[int | None, typer.Option("--n-epochs", help="Epochs (auto).")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Examples per step (auto).")] = None,
    lr_multiplier: Annotated[
        float | None, typer.Option("--lr-multiplier", help="Learning rate multiplier (auto).")
    ] = None,
    beta: Annotated[float | None, typer.Option("--beta", help="DPO's beta (auto = 0.1).")] = None,
    metadata: Annotated[list[str] | None, typer.Option("--metadata", help="key=value (repeat for more pairs).")] = None,
    as_json: JsonOption = False,
    base_url: BaseUrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Create a job (`POST /v1/fine_tuning/jobs`); hyperparameters left out are "auto"."""
    from openai import NOT_GIVEN

    if method not in ("supervised", "dpo", "reinforcement"):
        fail(f"--method must be supervised, dpo or reinforcement, got {method!r}", param="method")
    if (grader is None) == (method == "reinforcement"):
        fail("--grader goes with --method reinforcement, and that method needs one", param="grader")
    hyperparameters: dict[str, Any] = {
        name: value
        for name, value in (
            ("n_epochs", n_epochs),
            ("batch_size", batch_size),
            ("learning_rate_multiplier", lr_multiplier),
            ("beta", beta),
        )
        if value is not None
    }
    if beta is not None and method != "dpo":
        fail("--beta is a dpo option; add --method dpo", param="beta")
    connection = connect(base_url, api_key)
    with api_errors(connection, as_json=as_json):
        job = connection.openai().fine_tuning.jobs.create(
            model=model,
            training_file=training_file,
            validation_file=validation_file or NOT_GIVEN,
            suffix=suffix or NOT_GIVEN,
            seed=seed if seed is not None else NOT_GIVEN,
            metadata=parse_metadata(metadata) or NOT_GIVEN,
            method={"type": method, method: _method_section(hyperparameters, grader)},
        )
    if as_json:
        print_json(job)
        return
    typer.echo(f"created {job.id} ({job.status}) on {job.model}")
    typer.echo(f"  follow it with: openft jobs follow {job.id}")


def _method_section(hyperparameters: dict[str, Any], grader: str | None) -> dict[str, Any]:
    """`method.<type>`: its hyperparameters, and a reinforcement job's grader (read from a file, or given inline)."""
    if grader is None:
        return {"hyperparameters": hyperparameters}
    path = Path(grader)
    text = path.read_text(encoding="utf-8") if not grader.lstrip().startswith("{") and path.is_file() else grader
    try:
        parsed = json.loads(text)
    except ValueError:
        fail(f"--grader must be a JSON file or JSON text: {grader[:80]!r} is neither", param="grader")
    return {"grader": parsed, "hyperparameters": hyperparameters}


@app.command("list")
def list_jobs(
    limit: Annotated[int, typer.Option("--limit", min=1, max=100, help="At most this many (newest first).")] = 20,
    metadata: Annotated[list[str] | None, typer.Option("--metadata", help="Only jobs with key=value.")] = None,
    as_json: JsonOption = False,
    base_url: BaseUrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """List jobs, newest first (`GET /v1/fine_tuning/jobs`)."""
    from openai import NOT_GIVEN
    from rich.table import Column, Table

    connection = connect(base_url, api_key)
    with api_errors(connection, as_json=as_json):
        jobs = list(
            connection.openai().fine_tuning.jobs.list(limit=limit, metadata=parse_metadata(metadata) or NOT_GIVEN).data
        )
    if as_json:
        print_json(jobs)
        return
    table = Table(
        Column("id", no_wrap=True),
        "model",
        "status",
        Column("progress", no_wrap=True),
        Column("fine_tuned_model", no_wrap=True),
        Column("created (UTC)"),
    )
    for job in jobs:
        table.add_row(
            job.id, job.model, job.status, progress_text(job), job.fine_tuned_model or "", when(job.created_at)
        )
    console().print(table)


@app.command("get")
def get(
    job_id: JobId, as_json: JsonOption = False, base_url: BaseUrlOption = None, api_key: ApiKeyOption = None
) -> None:
    """Show one job (`GET /v1/fine_tuning/jobs/{id}`)."""
    connection = connect(base_url, api_key)
    with api_errors(connection, as_json=as_json):
        job = connection.openai().fine_tuning.jobs.retrieve(job_id)
    if as_json:
        print_json(job)
        return
    hyper = job.hyperparameters
    rows = [
        ("id", job.id),
        ("status", job.status),
        ("progress", progress_text(job)),
        ("model", job.model),
        ("fine_tuned_model", job.fine_tuned_model or ""),
        ("training_file", job.training_file),
        ("validation_file", job.validation_file or ""),
        ("method", job.method.type if job.method else "supervised"),
        (
            "hyperparameters",
            f"n_epochs={hyper.n_epochs} batch_size={hyper.batch_size} "
            f"learning_rate_multiplier={hyper.learning_rate_multiplier}",
        ),
        ("seed", job.seed),
        ("created", when(job.created_at) + " UTC"),
        ("finished", when(job.finished_at) + (" UTC" if job.finished_at else "")),
        ("estimated_finish", when(job.estimated_finish) + (" UTC" if job.estimated_finish else "")),
        ("trained_tokens", job.trained_tokens if job.trained_tokens is not None else ""),
        ("result_files", ", ".join(job.result_files)),
        ("metadata", ", ".join(f"{k}={v}" for k, v in (job.metadata or {}).items())),
    ]
    if job.error and job.error.message:
        rows.append(("error", f"{job.error.message} (param: {job.error.param}, code: {job.error.code})"))
    for name, value in rows:
        typer.echo(f"{name + ':':18} {value}")


@app.command("events")
def events(
    job_id: JobId,
    limit: Annotated[int, typer.Option("--limit", min=1, help="The newest this many events.")] = 100,
    as_json: JsonOption = False,
    base_url: BaseUrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """A job's events, oldest first (`GET /v1/fine_tuning/jobs/{id}/events`, paged back `limit` deep)."""
    connection = connect(base_url, api_key)
    with api_errors(connection, as_json=as_json):
        found = newest_events(connection.openai(), job_id, limit=limit)
    found.reverse()
    if as_json:
        print_json(found)
        return
    for event in found:
        typer.echo(format_event(event))


def newest_events(client: Any, job_id: str, *, limit: int, seen: set[str] | None = None) -> list[Any]:
    """Up to `limit` events, newest first, stopping at the first one already `seen` (events are newest first)."""
    found: list[Any] = []
    after = None
    while len(found) < limit:
        kwargs = {"limit": min(100, limit - len(found))} | ({"after": after} if after else {})
        page = client.fine_tuning.jobs.list_events(job_id, **kwargs)
        for event in page.data:
            if seen is not None and event.id in seen:
                return found
            found.append(event)
        if not page.has_more or not page.data:
            break
        after = page.data[-1].id
    return found


def format_event(event: Any) -> str:
    return f"{when(event.created_at)}  {event.level:5}  {event.message}"


@app.command("checkpoints")
def checkpoints(
    job_id: JobId, as_json: JsonOption = False, base_url: BaseUrlOption = None, api_key: ApiKeyOption = None
) -> None:
    """A job's checkpoints, newest first; each is a model (`GET /v1/fine_tuning/jobs/{id}/checkpoints`)."""
    from rich.table import Column, Table

    connection = connect(base_url, api_key)
    with api_errors(connection, as_json=as_json):
        found = list(connection.openai().fine_tuning.jobs.checkpoints.list(job_id, limit=100).data)
    if as_json:
        print_json(found)
        return
    table = Table(Column("id", no_wrap=True), "step", "train_loss", Column("model", no_wrap=True), "created (UTC)")
    for checkpoint in found:
        loss = checkpoint.metrics.train_loss if checkpoint.metrics else None
        table.add_row(
            checkpoint.id,
            str(checkpoint.step_number),
            f"{loss:.4f}" if loss is not None else "",
            checkpoint.fine_tuned_model_checkpoint,
            when(checkpoint.created_at),
        )
    console().print(table)


def _control(action: str, job_id: str, as_json: bool, base_url: str | None, api_key: str | None) -> None:
    connection = connect(base_url, api_key)
    with api_errors(connection, as_json=as_json):
        job = getattr(connection.openai().fine_tuning.jobs, action)(job_id)
    if as_json:
        print_json(job)
        return
    typer.echo(f"{job.id}: {job.status}")


@app.command("pause")
def pause(
    job_id: JobId, as_json: JsonOption = False, base_url: BaseUrlOption = None, api_key: ApiKeyOption = None
) -> None:
    """Pause a running job: it checkpoints, then is `paused` (`POST …/{id}/pause`)."""
    _control("pause", job_id, as_json, base_url, api_key)


@app.command("resume")
def resume(
    job_id: JobId, as_json: JsonOption = False, base_url: BaseUrlOption = None, api_key: ApiKeyOption = None
) -> None:
    """Resume a paused job from its checkpoint (`POST …/{id}/resume`)."""
    _control("resume", job_id, as_json, base_url, api_key)


@app.command("cancel")
def cancel(
    job_id: JobId, as_json: JsonOption = False, base_url: BaseUrlOption = None, api_key: ApiKeyOption = None
) -> None:
    """Cancel a job (`POST …/{id}/cancel`)."""
    _control("cancel", job_id, as_json, base_url, api_key)


@app.command("follow")
def follow(
    job_id: JobId,
    interval: Annotated[float, typer.Option("--interval", min=0.1, help="Seconds between polls.")] = 1.0,
    as_json: JsonOption = False,
    base_url: BaseUrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Watch a job until it ends: a progress bar (step/total, loss, tokens/s, ETA) and its events as they come.

    Exit code: 0 succeeded, 1 failed, 2 cancelled; 130 on Ctrl-C, which stops following, not the job.
    With --json, prints each event as a JSON line, then the final job.
    """
    from openft.client.follow import follow_job

    connection = connect(base_url, api_key)
    with api_errors(connection, as_json=as_json):
        code = follow_job(connection.openai(), job_id, interval=interval, as_json=as_json)
    raise typer.Exit(code)
