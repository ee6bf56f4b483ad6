"""`openft data check FILE`: what a job would make of a training file, checked on this machine (no server).

Prints every problem with its line number, then statistics with the model's tokenizer (examples, tokens
per example, examples over the context), the "auto" hyperparameters, the steps, an estimated training
time — by default from a short measured run of the real model here (`--estimate table` looks it up
instead, `--estimate none` skips it) — and the memory a job would need (`--mode lora|qlora|full`) and the
devices it fits. Exit code: 0 no problems, 1 problems found, 2 nothing could be
checked (no such file or model).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from openft.client.connection import JsonOption
from openft.trainer_contract import TrainingMethod
from openft.training.memory_plan import Mode

app = typer.Typer(help="Check training data locally, with the server's own validator.", no_args_is_help=True)
CANNOT_CHECK = 2
METHODS: dict[str, TrainingMethod] = {"supervised": "supervised", "dpo": "dpo", "reinforcement": "reinforcement"}
"""What `--method` accepts."""
MODES: dict[str, Mode] = {"lora": "lora", "qlora": "qlora", "full": "full"}
"""What `--mode` accepts (a job's `fine_tuning_mode`)."""


def _cannot(message: str, param: str, as_json: bool) -> typer.Exit:
    import json

    if as_json:
        typer.echo(json.dumps({"error": {"message": message, "param": param, "code": "invalid_request"}}))
    typer.echo(f"error: {message} (param: {param})", err=True)
    return typer.Exit(CANNOT_CHECK)


@app.command("check")
def check(
    file: Annotated[Path, typer.Argument(help="A JSONL training file (chat or DPO preference data).")],
    model: Annotated[
        str | None,
        typer.Option(
            "--model", help="Base model whose tokenizer counts tokens (the models dir's first, else SmolLM2)."
        ),
    ] = None,
    method: Annotated[str | None, typer.Option("--method", help="supervised, dpo (detected) or reinforcement.")] = None,
    n_epochs: Annotated[int | None, typer.Option("--n-epochs", min=1, help="As the job would set it (auto).")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, help="(auto)")] = None,
    estimate: Annotated[
        str, typer.Option("--estimate", help="measured (a few real steps here), table, or none.")
    ] = "measured",
    mode: Annotated[
        str, typer.Option("--mode", help="The job's fine_tuning_mode the memory estimate is for: lora, qlora or full.")
    ] = "lora",
    models_dir: Annotated[
        Path | None, typer.Option("--models-dir", help="Folder of base models (env OPENFT_MODELS_DIR).")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Where converted models are cached (env OPENFT_DATA_DIR).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Check a training file: problems by line, token statistics, "auto" hyperparameters, steps, time, memory."""
    from openft.basemodels import BUILTIN_MODEL_NAME, BaseModelUnavailable, ModelCatalog
    from openft.datacheck import check_file, default_model, measure_throughput, table_throughput
    from openft.settings import Settings

    if not file.is_file():
        raise _cannot(f"no such file: {file}", "file", as_json)
    if method is not None and method not in METHODS:
        raise _cannot(f"--method must be supervised, dpo or reinforcement, got {method!r}", "method", as_json)
    if estimate not in ("measured", "table", "none"):
        raise _cannot(f"--estimate must be measured, table or none, got {estimate!r}", "estimate", as_json)
    if mode not in MODES:
        raise _cannot(f"--mode must be lora, qlora or full, got {mode!r}", "mode", as_json)
    folders: dict[str, Any] = {"models_dir": models_dir, "data_dir": data_dir}  # unset: the environment's
    settings = Settings(**{name: path for name, path in folders.items() if path is not None})
    catalog = ModelCatalog.from_settings(settings)
    name = model or default_model(catalog) or BUILTIN_MODEL_NAME
    info = catalog.get(name)
    if info is None:
        known = ", ".join(i.name for i in catalog.list()) or "none"
        raise _cannot(f"no base model {name!r} here (known: {known}; --models-dir adds a folder)", "model", as_json)
    try:
        folder = catalog.materialize(info)
    except BaseModelUnavailable as exc:
        raise _cannot(str(exc), "model", as_json) from None
    throughput = {"measured": measure_throughput, "table": table_throughput, "none": None}[estimate]
    report = check_file(
        file,
        model=name,
        tokenizer_folder=folder,
        context_length=info.context_length,
        method=METHODS[method] if method is not None else None,
        n_epochs=n_epochs or "auto",
        batch_size=batch_size or "auto",
        throughput=throughput(folder) if throughput else None,
        fine_tuning_mode=MODES[mode],
    )
    if as_json:
        import json

        typer.echo(json.dumps(report.to_json(), ensure_ascii=False))
    else:
        print_report(report.to_json())
    raise typer.Exit(0 if report.ok else 1)


def print_report(report: dict[str, Any]) -> None:
    """Problems first (line N: message), then the statistics as two aligned columns."""
    from openft.client.connection import console

    out = console()
    out.print(f"{report['filename']}: {report['method']} data, checked for {report['model']}", markup=False)
    for problem in report["problems"]:
        where = f"line {problem['line']}" if problem["line"] is not None else "file"
        out.print(f"  {where}: {problem['message']} [{problem['code']}]", markup=False, highlight=False)
    shown = len(report["problems"])
    if report["n_problems"] > shown:
        out.print(f"  … and {report['n_problems'] - shown} more problem(s)")
    out.print(
        f"{report['n_problems']} problem(s) found" if report["n_problems"] else "no problems found",
        style="bold red" if report["n_problems"] else "bold green",
    )
    if report.get("truncated"):
        checked = report.get("checked_examples")
        out.print(
            f"checked only part of the file ({checked} example(s) counted): see the note below", style="bold yellow"
        )
    for note in report["notes"]:
        out.print(f"note: {note}", markup=False)
    stats = report["stats"]
    if stats is None:
        return
    rows: list[tuple[str, str]] = []
    tokens = stats["tokens"]
    rows.append(("examples", str(stats["examples"])))
    rows.append(("tokens per example", f"min {tokens['min']}, mean {tokens['mean']}, max {tokens['max']}"))
    rows.append(("total tokens", f"{stats['total_tokens']:,}"))
    over = f"{stats['over_context']} (context {stats['context_length']} tokens)"
    if stats["over_context_lines"]:
        over += ": lines " + ", ".join(map(str, stats["over_context_lines"]))
    rows.append(("over the context", over))
    chosen = report["auto"]
    rows.append(
        (
            "hyperparameters",
            f"n_epochs {chosen['n_epochs']}, batch_size {chosen['batch_size']}, "
            f"learning_rate_multiplier {chosen['learning_rate_multiplier']}",
        )
    )
    rows.append(("steps", str(report["steps"])))
    estimate = report["estimate"]
    if estimate is not None:
        rows.append(
            (
                "estimated time",
                f"{_duration(estimate['seconds'])} at {estimate['tokens_per_second']:,.0f} tokens/s "
                f"({estimate['source']}: {estimate['detail']})",
            )
        )
    if report.get("memory") is not None:
        from openft.datacheck.memory import summary

        rows.append(("memory", summary(report["memory"])))
    for label, value in rows:  # plain aligned columns: no trailing padding in logs and pipes
        out.print(f"  {label:<20}{value}", markup=False, highlight=False, soft_wrap=True)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"
