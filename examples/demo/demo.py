"""`make demo`: start openft, fine-tune SmolLM2 on an invented product, pause and resume, then compare.

Everything goes through the official `openai` SDK against a real openft server on this machine:
upload the dataset, create the job, follow it with a progress bar (step, loss, ETA), pause it,
resume it, and ask the base and the fine-tuned model the same held-out questions side by side.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from openai import OpenAI
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))  # examples/: demo_server
from demo_server import add_server_options, start_server
from make_dataset import DEMO_QUESTIONS, SYSTEM

BASE_MODEL = "SmolLM2-135M-Instruct"
DATASET = Path(__file__).with_name("zorblax.jsonl")
HYPERPARAMETERS = {"n_epochs": 5, "batch_size": 2, "learning_rate_multiplier": 4.0}
"""Explicit for a demo that must learn visibly in a couple of minutes ("auto" would pick batch 1 here)."""
console = Console()


def follow(client: OpenAI, job_id: str, *, pause_at: float | None) -> tuple[float | None, int]:
    """Show a progress bar until the job ends or (with pause_at) until it is paused."""
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("ETA {task.fields[eta]}"),
        TimeElapsedColumn(),
    ]
    pause_seconds = None
    step = 0
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("training", total=None, loss="-", eta="-")
        pause_requested_at = None
        while True:
            job = client.fine_tuning.jobs.retrieve(job_id)
            metrics = [e for e in client.fine_tuning.jobs.list_events(job_id, limit=20) if e.type == "metrics"]
            if metrics:
                latest = metrics[0].data
                step = latest["step"]
                eta = "-"
                if job.estimated_finish:
                    eta = f"{max(0, job.estimated_finish - int(time.time()))}s"
                progress.update(
                    task, total=latest["total_steps"], completed=step, loss=f"{latest['train_loss']:.3f}", eta=eta
                )
            progress.update(task, description=job.status)
            if job.status in ("succeeded", "failed", "cancelled"):
                return pause_seconds, step
            if job.status == "paused":
                return (time.monotonic() - pause_requested_at if pause_requested_at else None), step
            if (
                pause_at is not None
                and pause_requested_at is None
                and job.status == "running"
                and metrics
                and step >= pause_at * metrics[0].data["total_steps"]
            ):
                client.fine_tuning.jobs.pause(job_id)
                pause_requested_at = time.monotonic()
                progress.console.print(f"[yellow]pause requested at step {step}[/]")
            time.sleep(0.5)


def ask(client: OpenAI, model: str, question: str) -> str:
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
        max_tokens=48,
        temperature=0,
    )
    return (reply.choices[0].message.content or "").strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_server_options(parser)
    parser.add_argument("--keep-serving", action="store_true", help="leave the server running at the end")
    args = parser.parse_args()
    started = time.monotonic()

    console.rule("[bold]openft demo")
    server = start_server(args.data_dir, args.port)
    data_dir = server.data_dir
    console.print(f"server   {server.base_url}  (log: {server.log})")
    console.print(f"data dir {data_dir}")
    console.print(f"API key  {data_dir / 'api_key'}")
    client = OpenAI(base_url=server.base_url, api_key=server.api_key)
    try:
        training = client.files.create(file=DATASET.open("rb"), purpose="fine-tune")
        console.print(f"uploaded {DATASET.name} as {training.id} ({training.bytes} bytes)")
        job = client.fine_tuning.jobs.create(
            model=BASE_MODEL,
            training_file=training.id,
            suffix="zorblax",
            seed=42,
            method={"type": "supervised", "supervised": {"hyperparameters": HYPERPARAMETERS}},
        )
        console.print(f"created  {job.id} on {BASE_MODEL} (status {job.status})")

        pause_seconds, step = follow(client, job.id, pause_at=0.4)
        job = client.fine_tuning.jobs.retrieve(job.id)
        if job.status == "paused":
            console.print(f"[green]paused[/] at step {step}; pause request → paused took {pause_seconds:.1f}s")
            checkpoint = next(iter(client.fine_tuning.jobs.checkpoints.list(job.id)))
            console.print(f"checkpoint {checkpoint.fine_tuned_model_checkpoint}")
            time.sleep(1)
            console.print(f"resuming: status {client.fine_tuning.jobs.resume(job.id).status}")
            _, step = follow(client, job.id, pause_at=None)
            job = client.fine_tuning.jobs.retrieve(job.id)
        if job.status != "succeeded":
            sys.exit(f"job ended {job.status}: {job.error}")
        elapsed = (job.finished_at or 0) - job.created_at
        console.print(
            f"[bold green]succeeded[/]: {job.fine_tuned_model}  ({step} steps, {job.trained_tokens} tokens, "
            f"{elapsed}s including model conversion, validation, pause and resume)"
        )

        table = Table(title="Same question, base vs fine-tuned (temperature 0)", show_lines=True)
        table.add_column("question", style="bold", max_width=28)
        table.add_column(BASE_MODEL, max_width=48)
        table.add_column("fine-tuned", max_width=48, style="green")
        for question in DEMO_QUESTIONS:
            table.add_row(question, ask(client, BASE_MODEL, question), ask(client, job.fine_tuned_model, question))
        console.print(table)
        console.print(f"demo finished in {time.monotonic() - started:.0f}s")
        console.print(
            f"the model stays available: run `openft serve --data-dir {data_dir}` and call it as "
            f"'{job.fine_tuned_model}' with base_url http://127.0.0.1:8000/v1 and the key in {data_dir / 'api_key'}"
        )
    finally:
        if args.keep_serving:
            console.print(f"server still running (pid {server.process.pid}) at {server.base_url}")
        else:
            server.stop()


if __name__ == "__main__":
    main()
