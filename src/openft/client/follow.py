"""`openft jobs follow`: poll a job and its events until it ends, with a live progress bar.

Each poll reads the job first and its new events second, so when the job is seen finished every event up to
its end has been read too. The bar's "step N/M" is the job's own `completed_steps`/`total_steps` (openft's
extension fields, docs/api-compatibility.md §4) and its ETA the job's `estimated_finish`; `metrics` events
(see `openft.jobs.runner._metrics_event`) add what the job does not hold: `train_loss`, and tokens/s from
`trained_tokens` (cumulative) and `step_seconds` (wall time per step) over the last `SPEED_WINDOW` of them.
Every other event is printed as it comes. Ctrl-C ends the following, never the job.
"""

from __future__ import annotations

import collections
import json
import time
from typing import Any

import typer

from openft.client.connection import to_json
from openft.client.jobs import format_event, job_steps, newest_events

EXIT_CODES = {"succeeded": 0, "failed": 1, "cancelled": 2}
"""`openft jobs follow`'s exit code per final status (README "Command line"); 130 after Ctrl-C."""
INTERRUPTED = 130
SPEED_WINDOW = 20
MAX_EVENTS_PER_POLL = 100_000


class Speed:
    """tokens/s over the last metrics events that carry `trained_tokens` and `step_seconds`."""

    def __init__(self) -> None:
        self._window: collections.deque[tuple[int, int, float]] = collections.deque(maxlen=SPEED_WINDOW)

    def add(self, data: dict[str, Any]) -> None:
        step, tokens, seconds = data.get("step"), data.get("trained_tokens"), data.get("step_seconds")
        if isinstance(step, int) and isinstance(tokens, int) and isinstance(seconds, int | float):
            if self._window and step <= self._window[-1][0]:  # steps trained again after a recovery
                self._window.clear()
            self._window.append((step, tokens, float(seconds)))

    def tokens_per_second(self) -> float | None:
        points = list(self._window)
        if len(points) < 2:
            return None
        elapsed = sum(seconds * (step - points[i][0]) for i, (step, _t, seconds) in enumerate(points[1:]))
        return (points[-1][1] - points[0][1]) / elapsed if elapsed > 0 else None


def _eta(estimated_finish: int | None) -> str:
    if not estimated_finish:
        return "–"
    left = max(0, int(estimated_finish - time.time()))
    return f"{left // 3600}:{left % 3600 // 60:02d}:{left % 60:02d}"


def follow_job(client: Any, job_id: str, *, interval: float, as_json: bool) -> int:
    """Follow until the job ends; returns the exit code (`EXIT_CODES`, or 130 on Ctrl-C)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn

    console = Console(stderr=as_json)  # with --json, stdout carries JSON lines only
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("step {task.completed}/{task.fields[total_text]}"),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[speed]} tok/s"),
        TextColumn("ETA {task.fields[eta]}"),
        console=console,
        transient=False,
        disable=as_json,
    )
    task = progress.add_task(job_id, total=None, total_text="?", loss="–", speed="–", eta="–")
    seen: set[str] = set()
    speed = Speed()
    loss = None
    try:
        with progress:
            while True:
                job = client.fine_tuning.jobs.retrieve(job_id)
                new = newest_events(client, job_id, limit=MAX_EVENTS_PER_POLL, seen=seen)
                for event in reversed(new):
                    seen.add(event.id)
                    data = event.data if isinstance(event.data, dict) else {}
                    if as_json:
                        typer.echo(json.dumps(to_json(event)))
                    if event.type == "metrics":
                        loss = data.get("train_loss", loss)
                        speed.add(data)
                    elif not as_json:
                        progress.console.print(format_event(event), markup=False, highlight=False)
                rate = speed.tokens_per_second()
                step, total = job_steps(job)
                progress.update(
                    task,
                    description=f"{job_id} {job.status}",
                    completed=step or 0,
                    total=total,
                    total_text=str(total) if total else "?",
                    loss=f"{loss:.4f}" if isinstance(loss, float) else "–",
                    speed=f"{rate:,.0f}" if rate is not None else "–",
                    eta=_eta(job.estimated_finish) if job.status in ("running", "queued") else "–",
                )
                if job.status in EXIT_CODES:
                    break
                time.sleep(interval)
    except KeyboardInterrupt:
        typer.echo(
            f"stopped following; {job_id} continues on the server "
            f"(`openft jobs follow {job_id}` to watch again, `openft jobs cancel {job_id}` to stop it)",
            err=True,
        )
        return INTERRUPTED
    if as_json:
        typer.echo(json.dumps(to_json(job)))
    else:
        typer.echo(_outcome(job))
    return EXIT_CODES[job.status]


def _outcome(job: Any) -> str:
    if job.status == "succeeded":
        tokens = f", {job.trained_tokens:,} tokens trained" if job.trained_tokens else ""
        return f"succeeded: {job.fine_tuned_model}{tokens}\n  chat with it: openft chat {job.fine_tuned_model}"
    if job.status == "failed" and job.error is not None:
        return f"failed: {job.error.message} (param: {job.error.param}, code: {job.error.code})"
    return job.status
