"""What `openft import openai|azure` would do with a vendor's fine-tuning jobs: pure rules, no network.

`importer.py` fetches the vendor's jobs and files and the openft server's existing imports, then asks this
module, one job at a time, what to create: which openft base the vendor model maps to, which method and
hyperparameters (with the learning-rate multiplier rescaled), which suffix, seed and metadata, and how long
training should take. Keeping it free of I/O lets the mapping and scaling rules be tested on their own.

**The default map** (`DEFAULT_MAP`; `--map SRC=DST` adds or overrides entries). OpenAI's fine-tunable models
are matched to the open 7–8B instruct models an operator is most likely to have, by what users tuned them for:
the small, cheap tiers (gpt-4o-mini, gpt-4.1-mini, gpt-4.1-nano, gpt-3.5-turbo) go to Qwen2.5-7B-Instruct
(the strongest general 7B at JSON/structured output, multilingual text and instruction following, which is
what those tiers are mostly fine-tuned for; Apache-2.0); the large tiers (gpt-4o, gpt-4.1) go to
Llama-3.1-8B-Instruct (a little larger, a 128k context and the widest adapter tooling; no open 8B model is a
real substitute for them, so the map picks the larger one). The names are local model folders
(`OPENFT_MODELS_DIR/<name>`); map to an `org/name` hub id instead where the server allows hub models.

A vendor model is matched by its exact name first, then by the longest entry it starts with followed by
`-` (so `gpt-4o-mini-2024-07-18` takes the `gpt-4o-mini` entry, not `gpt-4o`'s). A vendor job that
continued a fine-tuned model (`ft:gpt-4o-mini-2024-07-18:org:suffix:id`) is mapped by the base inside that
name: the parent's training is not carried over (import the parent too; its alias names the new model).

**The learning-rate multiplier** (`LR_SCALE`, `--lr-scale`). openft trains at `multiplier × base LR`, the
base being 2e-4 for LoRA (2e-5 for full fine-tuning), and its "auto" multiplier is 1.0 up to batch 8
(`openft.datasets.auto`). OpenAI's multiplier scales an unpublished base LR of its own; its "auto" resolves
to about 2 for the small batches most jobs use (1.8 for gpt-4o-mini and 2 for gpt-3.5-turbo at batch 1–4,
the values its succeeded jobs report). The two numbers are therefore not comparable, but their defaults
are: a job that ran at OpenAI's default should run at openft's, and one run at half OpenAI's default at
half openft's. So the multiplier is multiplied by 0.5, which maps OpenAI's typical auto of 2 onto openft's
1.0 (LR 2e-4 for LoRA) and keeps every job's ratio to its default. "auto" stays "auto"; the result is
capped at openft's limit of 100.

**The time estimate** is labelled as one: tokens (the vendor's `trained_tokens` when it reports them, else
the training file's bytes / 4 × epochs, 3 epochs for "auto") divided by an assumed LoRA throughput of
`TOKENS_PER_SECOND_7B` tokens/s for a 7–8B model on one H100-class GPU in bf16, scaled inversely with the
parameter count read from the base's name (`…-0.5B-…`, `…-135M-…`), 7B when the name says none.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from openft.protocol.fine_tuning import MAX_METADATA_PAIRS, SUFFIX_PATTERN

DEFAULT_MAP: dict[str, str] = {
    "gpt-4o-mini": "Qwen2.5-7B-Instruct",
    "gpt-4.1-mini": "Qwen2.5-7B-Instruct",
    "gpt-4.1-nano": "Qwen2.5-7B-Instruct",
    "gpt-3.5-turbo": "Qwen2.5-7B-Instruct",
    "gpt-4o": "Llama-3.1-8B-Instruct",
    "gpt-4.1": "Llama-3.1-8B-Instruct",
}
LR_SCALE = 0.5
"""openft multiplier = OpenAI multiplier × this (module docstring: their defaults are about 2 and 1.0)."""
MAX_LR_MULTIPLIER = 100.0
"""openft's own limit on `learning_rate_multiplier` (protocol/fine_tuning.py)."""
TOKENS_PER_SECOND_7B = 2500.0
"""Assumed LoRA training throughput of a 7–8B model on one H100-class GPU in bf16 (an assumption, not measured)."""
AUTO_EPOCHS_GUESS = 3
"""Epochs assumed for the estimate when they are "auto" (openft's auto is 3 for all but tiny or huge files)."""
BYTES_PER_TOKEN = 4
SOURCE_KEY = "openft_import_source"
MODEL_KEY = "openft_import_model"
PROVIDERS = ("openai", "azure")
SUPPORTED_METHODS = ("supervised", "dpo")
HYPERPARAMETER_NAMES = ("n_epochs", "batch_size", "learning_rate_multiplier")


class PlanError(ValueError):
    """A user-given option (`--map`, `--since`) that cannot be read."""


def parse_map(pairs: Sequence[str] | None, *, defaults: Mapping[str, str] = DEFAULT_MAP) -> dict[str, str]:
    """The default map with `--map SRC=DST` entries added (a user's entry replaces the default for SRC)."""
    mapping = dict(defaults)
    for pair in pairs or ():
        source, sep, target = pair.partition("=")
        source, target = source.strip(), target.strip()
        if not sep or not source or not target:
            raise PlanError(f"--map takes SRC=DST (a vendor model and an openft base), got {pair!r}")
        mapping[source] = target
    return mapping


def vendor_base(model: str) -> str:
    """The base model inside a vendor fine-tuned model's name (`ft:BASE:org:suffix:id` → BASE), else `model`."""
    if model.startswith("ft:"):
        parts = model.split(":")
        if len(parts) > 1 and parts[1]:
            return parts[1]
    return model


def map_model(model: str, mapping: Mapping[str, str]) -> str | None:
    """The openft base for a vendor model: an exact entry, else the longest entry it extends (`entry-…`)."""
    name = vendor_base(model)
    for candidate in (model, name):
        if candidate in mapping:
            return mapping[candidate]
    prefixes = [source for source in mapping if name.startswith(source + "-")]
    return mapping[max(prefixes, key=len)] if prefixes else None


def parse_since(text: str) -> int:
    """`--since`: unix seconds, or an ISO date / date-time (UTC unless it names a zone)."""
    text = text.strip()
    if re.fullmatch(r"\d+", text):
        return int(text)
    try:
        stamp = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise PlanError(f"--since takes a date (2025-01-31), a date-time or unix seconds, got {text!r}") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=datetime.UTC)
    return int(stamp.timestamp())


def _auto(value: Any) -> Any:
    """The vendor's spelling of "not set" (null, Azure's -1) as "auto"."""
    if value is None or value == "auto" or (value == -1 and not isinstance(value, bool)):
        return "auto"
    return value


def scale_lr(value: Any, factor: float = LR_SCALE) -> Any:
    """A vendor learning-rate multiplier on openft's scale ("auto" stays "auto")."""
    value = _auto(value)
    if value == "auto":
        return "auto"
    return min(MAX_LR_MULTIPLIER, float(f"{float(value) * factor:.6g}"))


def method_of(job: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The job's method type and its hyperparameters, from `method` or the legacy top-level `hyperparameters`."""
    method = job.get("method") or {}
    kind = method.get("type") or "supervised"
    found = (method.get(kind) or {}).get("hyperparameters") if isinstance(method.get(kind), dict) else None
    if not found:
        found = job.get("hyperparameters") or {}
    return kind, dict(found)


def openft_hyperparameters(kind: str, vendor: Mapping[str, Any], lr_scale: float = LR_SCALE) -> dict[str, Any]:
    """The hyperparameters to create the openft job with: epochs and batch kept, the multiplier rescaled."""
    result: dict[str, Any] = {
        "n_epochs": _auto(vendor.get("n_epochs")),
        "batch_size": _auto(vendor.get("batch_size")),
        "learning_rate_multiplier": scale_lr(vendor.get("learning_rate_multiplier"), lr_scale),
    }
    if kind == "dpo":
        beta = _auto(vendor.get("beta"))
        result["beta"] = float(beta) if beta != "auto" else "auto"
    return result


def import_source(provider: str, vendor_job_id: str) -> str:
    """The metadata value that marks an openft job as the import of this vendor job (the idempotency key)."""
    return f"{provider}:{vendor_job_id}"


def import_metadata(
    vendor_metadata: Mapping[str, str] | None, source: str, fine_tuned_model: str | None
) -> tuple[dict[str, str], list[str]]:
    """The vendor's metadata plus the import keys, and the vendor keys dropped to stay within 16 pairs.

    The import keys always win: the server finds the alias to create, and the importer its earlier
    imports, by them. Vendor keys are kept in their order and the last ones dropped when there is no room.
    """
    ours = {SOURCE_KEY: source} | ({MODEL_KEY: fine_tuned_model} if fine_tuned_model else {})
    theirs = [(k, v) for k, v in (vendor_metadata or {}).items() if k not in (SOURCE_KEY, MODEL_KEY)]
    room = MAX_METADATA_PAIRS - len(ours)
    kept, dropped = theirs[:room], [key for key, _ in theirs[room:]]
    return dict(kept) | ours, dropped


def suffix_of(job: Mapping[str, Any]) -> str | None:
    """The suffix the user gave the vendor job, in openft's alphabet (`[A-Za-z0-9._-]`, at most 64 characters).

    OpenAI and openft report `user_provided_suffix`, Azure `suffix`; failing both, it is the fourth part of
    `ft:base:org:suffix:id`.
    """
    suffix = job.get("user_provided_suffix") or job.get("suffix")
    model = job.get("fine_tuned_model") or ""
    if not suffix and model.startswith("ft:"):
        parts = model.split(":")
        suffix = parts[3] if len(parts) >= 5 else None
    if not suffix:
        return None
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "-", str(suffix))[:64]
    return cleaned if re.fullmatch(SUFFIX_PATTERN, cleaned) else None


def tokens_per_second(base: str) -> float:
    """The assumed throughput for `base` (module docstring): 7B-equivalent scaled by the size in its name."""
    found = re.search(r"(?<![A-Za-z0-9.])(\d+(?:\.\d+)?)([BbMm])(?![A-Za-z])", base.rsplit("/", 1)[-1])
    billions = 7.0
    if found:
        billions = float(found.group(1)) / (1000 if found.group(2) in "Mm" else 1)
    return TOKENS_PER_SECOND_7B * 7.0 / max(billions, 0.7)  # at most 10× faster: small models are overhead-bound


@dataclass
class VendorFile:
    id: str
    filename: str | None = None
    bytes: int | None = None


@dataclass
class Estimate:
    tokens: int | None
    tokens_per_second: float
    seconds: float | None
    basis: str
    """How `tokens` was found: the vendor's trained_tokens, or the file's bytes / 4 × epochs."""


@dataclass
class PlannedJob:
    """One vendor job and what the import does with it: `create`, or `skip` with the reason."""

    vendor_job_id: str
    vendor_model: str
    status: str
    action: str
    reason: str = ""
    base: str | None = None
    method: str = "supervised"
    vendor_hyperparameters: dict[str, Any] = field(default_factory=dict)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    suffix: str | None = None
    seed: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    dropped_metadata: list[str] = field(default_factory=list)
    fine_tuned_model: str | None = None
    training_file: VendorFile | None = None
    validation_file: VendorFile | None = None
    estimate: Estimate | None = None
    existing_job: str | None = None
    """The openft job that already imports this vendor job (action `skip`)."""
    notes: list[str] = field(default_factory=list)
    openft_job: str | None = None
    """The job created by this run (filled by the importer)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def estimate(job: Mapping[str, Any], base: str, hyperparameters: Mapping[str, Any], train: VendorFile) -> Estimate:
    """How long the openft job should train (module docstring: an estimate, on an assumed throughput)."""
    rate = tokens_per_second(base)
    tokens: int | None
    trained = job.get("trained_tokens")
    if isinstance(trained, int) and trained > 0:
        tokens, basis = trained, "vendor trained_tokens"
    elif train.bytes is not None:
        epochs = hyperparameters.get("n_epochs")
        epochs = epochs if isinstance(epochs, int) else AUTO_EPOCHS_GUESS
        tokens, basis = (
            train.bytes // BYTES_PER_TOKEN * epochs,
            f"training file bytes / {BYTES_PER_TOKEN} × {epochs} epochs",
        )
    else:
        tokens, basis = None, "unknown (no file size)"
    seconds = round(tokens / rate, 1) if tokens is not None else None
    return Estimate(tokens, round(rate, 1), seconds, basis)


def plan_job(
    job: Mapping[str, Any],
    *,
    provider: str,
    mapping: Mapping[str, str],
    files: Mapping[str, VendorFile],
    existing: Mapping[str, str],
    lr_scale: float = LR_SCALE,
    known_bases: set[str] | None = None,
) -> PlannedJob:
    """What to do with one vendor job (a dict of its JSON).

    `files`: the vendor's file objects by id (a missing id: the vendor no longer has it); `existing`: openft
    jobs by their `openft_import_source`; `known_bases`: the server's models, to warn about a base it lacks.
    """
    vendor_id, model, status = str(job["id"]), str(job.get("model") or ""), str(job.get("status") or "")
    planned = PlannedJob(vendor_id, model, status, "create", fine_tuned_model=job.get("fine_tuned_model"))
    kind, vendor_hyper = method_of(job)
    planned.method, planned.vendor_hyperparameters = kind, vendor_hyper
    source = import_source(provider, vendor_id)
    if source in existing:
        planned.action, planned.existing_job = "skip", existing[source]
        planned.reason = f"already imported as {existing[source]}"
        return planned
    if kind == "reinforcement":  # the vendor's were reasoning models, often judged by its own models
        planned.action, planned.reason = (
            "skip",
            (
                "reinforcement jobs are not imported (a vendor's RFT trains reasoning models, often judged by the "
                "vendor's own models); create one with openft's reinforcement method and a grader whose judges are "
                "openft models"
            ),
        )
        return planned
    if kind not in SUPPORTED_METHODS:
        planned.action, planned.reason = "skip", f"method {kind!r} is not supported by openft yet"
        return planned
    base = map_model(model, mapping)
    if base is None:
        planned.action = "skip"
        planned.reason = f"no openft base for vendor model {model!r}; add --map {vendor_base(model)}=<openft base>"
        return planned
    planned.base = base
    if model.startswith("ft:"):
        planned.notes.append(f"continued {model}: trains on {base} from scratch (the parent's training is not copied)")
    train_id, valid_id = job.get("training_file"), job.get("validation_file")
    for label, file_id in (("training", train_id), ("validation", valid_id)):
        if file_id and file_id not in files:
            planned.action, planned.reason = "skip", f"the vendor no longer has its {label} file {file_id}"
            return planned
    if not train_id:
        planned.action, planned.reason = "skip", "the vendor job names no training file"
        return planned
    planned.training_file = files[train_id]
    planned.validation_file = files[valid_id] if valid_id else None
    planned.hyperparameters = openft_hyperparameters(kind, vendor_hyper, lr_scale)
    planned.suffix = suffix_of(job)
    raw_suffix = job.get("user_provided_suffix") or job.get("suffix")
    if raw_suffix and planned.suffix != raw_suffix:
        planned.notes.append(f"suffix {raw_suffix!r} became {planned.suffix!r} (openft allows [A-Za-z0-9._-], 64)")
    seed = job.get("seed")
    planned.seed = seed if isinstance(seed, int) and 0 <= seed <= 2_147_483_647 else None
    planned.metadata, planned.dropped_metadata = import_metadata(job.get("metadata"), source, planned.fine_tuned_model)
    if planned.dropped_metadata:
        planned.notes.append(
            f"metadata keys dropped (at most {MAX_METADATA_PAIRS} pairs): {', '.join(planned.dropped_metadata)}"
        )
    if known_bases is not None and base not in known_bases:
        planned.notes.append(f"the server does not list {base!r} as a model; creating the job may fail")
    planned.estimate = estimate(job, base, planned.hyperparameters, planned.training_file)
    return planned


def create_request(planned: PlannedJob, training_file: str, validation_file: str | None) -> dict[str, Any]:
    """The openft `POST /fine_tuning/jobs` body for a planned job, given its files' new ids."""
    assert planned.base is not None
    body: dict[str, Any] = {
        "model": planned.base,
        "training_file": training_file,
        "method": {"type": planned.method, planned.method: {"hyperparameters": planned.hyperparameters}},
        "metadata": planned.metadata,
    }
    if validation_file:
        body["validation_file"] = validation_file
    if planned.suffix:
        body["suffix"] = planned.suffix
    if planned.seed is not None:
        body["seed"] = planned.seed
    return body


def duration(seconds: float | None) -> str:
    """`~1h 05m`, `~12m`, `~40s`: an estimate, so never more precise than minutes past the first one."""
    if seconds is None:
        return "unknown"
    whole = round(seconds)
    if whole < 60:
        return f"~{whole}s"
    hours, minutes = divmod(whole // 60, 60)
    return f"~{hours}h {minutes:02d}m" if hours else f"~{minutes}m"
