"""The names a fine-tuned model and its checkpoints are called by (docs/api-compatibility.md §7): built here
only, so the worker that records them and the services that resolve them cannot disagree."""

from __future__ import annotations

from openft.ids import short_job_id

CHECKPOINT_MARK = ":ckpt-step-"


def fine_tuned_model_name(base: str, org_name: str, suffix: str | None, job_id: str) -> str:
    """`ft:{base}:{org}:{suffix}:{id8}`; a hub id's `/` becomes `--` (a model name holds no slash)."""
    return f"ft:{base.replace('/', '--')}:{org_name}:{suffix or ''}:{short_job_id(job_id)}"


def checkpoint_model_name(model_name: str, step: int) -> str:
    """`{fine_tuned_model}:ckpt-step-{step}`: a listed checkpoint, callable like the final model."""
    return f"{model_name}{CHECKPOINT_MARK}{step}"
