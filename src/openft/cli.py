"""The `openft` command: a thin typer layer over the same code the server uses."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(help="openft: self-hosted fine-tuning with the OpenAI / Azure fine-tuning API.", no_args_is_help=True)
db_app = typer.Typer(help="Database administration.", no_args_is_help=True)
app.add_typer(db_app, name="db")

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Data folder [env OPENFT_DATA_DIR, ./openft-data].")]
ModelsDir = Annotated[Path | None, typer.Option("--models-dir", help="Folder of base models [env OPENFT_MODELS_DIR].")]


def _settings(**overrides: Any) -> Any:
    from openft.settings import Settings

    return Settings(**{key: value for key, value in overrides.items() if value is not None})


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
) -> None:
    """Start the API server and (unless --no-worker) the worker that runs jobs, in one process."""
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
    )
    if no_worker:
        settings.run_worker = False
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
    typer.echo(f"  worker:     {'running in this process' if container.worker else 'off (--no-worker)'}")
    uvicorn.run(
        create_app(settings, container=container),
        host=settings.host,
        port=settings.port,
        log_level="info",
        timeout_graceful_shutdown=5,
    )


@app.command()
def train(
    job_file: Annotated[Path, typer.Argument(help="The job.json the worker wrote (see openft.jobspec).")],
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

    container = build_container(_settings(data_dir=data_dir, models_dir=models_dir), with_worker=False)
    try:
        target = container.models.target(container.default_org_id, model)
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


def main() -> None:
    app()
