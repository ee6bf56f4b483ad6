"""Weights & Biases tracking of a training run (`integrations: [{type: wandb, ...}]`, `TrainJobSpec.wandb`).

The recipe knows nothing of W&B: it talks to a `ProgressChannel`, and when the job asks for W&B the entry point
hands it a `TrackedProgressChannel` instead. That wrapper passes every message on unchanged (first, so the worker
never waits for W&B) and mirrors what it says into one W&B run through a `Tracker`:

    started     config: total_steps, n_examples, trainable_params, num_threads
    metrics     every numeric field (train_loss, learning_rate, epoch, trained_tokens, ...) at its `step`
    checkpoint  the checkpoint's metrics as `checkpoint/<name>` at its step
    completed / stopped / failed   the run summary (`status`, ...), then the run is finished

Config at start: everything in the spec except paths (job id, base model, method, hyperparameters, seed,
LoRA, ...); tags: the job's plus `openft/finetune`, `openft/{base model}`, `openft/{job id}`; name: the
job's, else the job id.

One run across pause/resume: its id is made once and kept in `output_dir/wandb_run_id`; a resumed process
calls `wandb.init(id=..., resume="allow")`. A resumed process continues at its checkpoint's step, so after
a pause (which checkpoints the step it stops at) steps go on without a gap or a repeat. After a kill -9 the
killed process may have logged steps beyond its last checkpoint; the resumed process trains those steps
again and logs them under their true step numbers. W&B keeps the first value of a step and ignores a step
that is not above the run's last one (online: it drops them with a warning in its debug log; offline:
`wandb sync` of the run's folders in start order does the same). Nothing fails, and on CPU the repeated
steps are bit-identical to the dropped ones anyway (exact resume).

Without an API key (WANDB_API_KEY, or a ~/.netrc entry for the W&B host) or without a reachable W&B
server, the run is written offline under `output_dir/wandb/` (one `offline-run-<time>-<id>` folder per
process, W&B's layout for a resumed run) and a `warn` log message says how to upload it (`wandb sync`).
WANDB_MODE=offline or disabled in the trainer's environment is honoured.

The key is the operator's (the server's environment), never a tenant's: a job cannot choose the W&B
`entity` it writes into, or any tenant could use the operator's key to write into any team that key can
reach. The API refuses a job that names one (400, param `integrations`); a job stored before that rule is
logged to the key's default entity (or the operator's WANDB_ENTITY) with a `warn` message. Messages name
no server path or host: the job's owner reads them.

W&B never breaks or slows training: wandb is imported only for such jobs, init has a timeout, console
capture is off and W&B's own output is silenced (stdout is the progress channel; the entry point has
already pointed descriptor 1 at stderr, which the wandb-core process inherits), and any W&B exception is
reported once as a `warn` message, after which training goes on untracked. Nothing here draws from the
random generators that training uses (the run id comes from `secrets`).
"""

from __future__ import annotations

import contextlib
import math
import netrc
import os
import re
import secrets
import socket
import string
import sys
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from openft.fsutil import atomic_write_text, ensure_dir
from openft.trainer_contract import ProgressType, TrainJobSpec
from openft.training.progress import ProgressChannel

RUN_ID_FILE = "wandb_run_id"
WANDB_DIR = "wandb"
DEFAULT_BASE_URL = "https://api.wandb.ai"
INIT_TIMEOUT_S = 30.0
"""How long wandb.init may take (online: creating or resuming the run on the server)."""
FINISH_TIMEOUT_S = 60.0
"""How long finishing may wait for uploads; what is left stays on disk for `wandb sync`."""
FLUSH_INTERVAL_S = 5.0
"""How often the run's `.wandb` file is flushed to disk."""
PROBE_TIMEOUT_S = 3.0
"""A TCP connect to the W&B host, so that a machine without network goes offline at once."""
MAX_TAG = 64
_RUN_ID_CHARS = string.ascii_lowercase + string.digits
_RUN_ID = re.compile(r"[a-z0-9]{1,64}")
_PATH_FIELDS = {"cache_dir", "training_file", "validation_file", "output_dir", "wandb"}
_STARTED_CONFIG = ("total_steps", "n_examples", "trainable_params", "num_threads")
_NOT_LOGGED = {"type", "step", "total_steps"}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def numeric_fields(fields: Mapping[str, Any], *, prefix: str = "", skip: set[str] = _NOT_LOGGED) -> dict[str, Any]:
    """The fields worth a chart: finite numbers, not the step itself."""
    return {prefix + k: v for k, v in fields.items() if k not in skip and _is_number(v)}


def run_config(spec: TrainJobSpec) -> dict[str, Any]:
    """Everything in the spec except paths (and the W&B settings themselves)."""
    config = spec.model_dump(mode="json", exclude=_PATH_FIELDS)
    config["base_model"].pop("path", None)
    config["learning_rate"] = spec.base_learning_rate * spec.hyperparameters.learning_rate_multiplier
    return config


def run_tags(spec: TrainJobSpec) -> list[str]:
    """The job's tags, then the defaults OpenAI's integration adds (with `openft/` for `openai/`)."""
    assert spec.wandb is not None
    wanted = [*(spec.wandb.tags or []), "openft/finetune", f"openft/{spec.base_model.name}", f"openft/{spec.job_id}"]
    tags: list[str] = []
    for tag in (t.strip()[:MAX_TAG] for t in wanted):
        if tag and tag not in tags:
            tags.append(tag)
    return tags


def read_or_create_run_id(output_dir: Path) -> str:
    """The job's W&B run id, made on first use and kept in `output_dir/wandb_run_id` (atomic write)."""
    path = output_dir / RUN_ID_FILE
    try:
        existing = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        existing = ""
    if _RUN_ID.fullmatch(existing):
        return existing
    run_id = "".join(secrets.choice(_RUN_ID_CHARS) for _ in range(8))  # not `random`: training's RNG stays put
    atomic_write_text(path, run_id + "\n")
    return run_id


def base_url() -> str:
    return os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL


def has_api_key(url: str) -> bool:
    """WANDB_API_KEY (or an identity token file), or a netrc entry for the W&B host, as wandb looks them up."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlsplit(url).hostname
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc").expanduser()
    if not host or not path.is_file():
        return False
    try:
        entry = netrc.netrc(path).authenticators(host)
    except (netrc.NetrcParseError, OSError):
        return False
    return bool(entry and entry[2])


def can_reach(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    parts = urlsplit(url)
    if not parts.hostname:
        return False
    port = parts.port or (80 if parts.scheme == "http" else 443)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError:
        return False
    return True


class Tracker:
    """One W&B run for one job: start, log, summarize, finish. No method raises; after the first W&B
    error the tracker warns once (through `warn`) and does nothing more."""

    def __init__(self, spec: TrainJobSpec, warn: Callable[[str], None], info: Callable[[str], None] | None = None):
        if spec.wandb is None:
            raise ValueError("the job has no wandb integration")
        self.spec = spec
        self.settings = spec.wandb
        self.output_dir = Path(spec.output_dir)
        self._warn = warn
        self._info = info or (lambda message: None)
        self._run: Any = None
        self._failed = False
        self.run_id: str | None = None
        self.mode: str | None = None
        """online or offline once started; None while not tracking."""

    @property
    def active(self) -> bool:
        return self._run is not None

    @property
    def wandb_dir(self) -> Path:
        return self.output_dir / WANDB_DIR

    def start(self) -> None:
        try:
            self._start()
        except Exception as exc:
            self._fail(exc)

    def _start(self) -> None:
        forced = os.environ.get("WANDB_MODE", "").strip().lower()
        if forced == "disabled":
            self._info("W&B: WANDB_MODE=disabled; not logging to W&B")
            return
        ensure_dir(self.output_dir)
        self.run_id = read_or_create_run_id(self.output_dir)
        if self.settings.entity:
            self._warn(
                f"W&B: the entity {self.settings.entity!r} is not used: this server logs with its operator's W&B "
                "key, which writes only into the operator's own entity"
            )
        import wandb  # imported only for jobs that ask for W&B (a second or so)

        url = base_url()
        offline_reason = None
        if forced in ("offline", "dryrun"):
            offline_reason = f"WANDB_MODE={forced}"
        elif not has_api_key(url):
            offline_reason = "no API key (WANDB_API_KEY or ~/.netrc)"
        elif not can_reach(url):
            print(f"W&B: cannot reach {url}", file=sys.stderr, flush=True)  # the host is the operator's business
            offline_reason = "no network (cannot reach the W&B server)"
        if offline_reason is None:
            try:
                self._run = self._init(wandb, "online")
            except Exception as exc:
                offline_reason = f"cannot start the run online ({type(exc).__name__}: {str(exc)[:300]})"
        if self._run is None:
            self._run = self._init(wandb, "offline")
            print(f"W&B: logging offline to {self.wandb_dir}", file=sys.stderr, flush=True)
            self._warn(
                f"W&B: {offline_reason}; logging offline into the job's folder on the server; the operator can "
                f"upload it by running `wandb sync {WANDB_DIR}/offline-run-*-{self.run_id}` in the job folder"
            )
        self.mode = "online" if offline_reason is None else "offline"
        if self.mode == "online":
            run_url = getattr(self._run, "url", None)
            self._info(f"W&B: logging to {run_url or self.settings.project} (run {self.run_id})")

    def _init(self, wandb: Any, mode: str) -> Any:
        options: dict[str, Any] = {
            "silent": True,  # no banners or warnings on the terminal
            "console": "off",  # no stdout/stderr capture: stdout is the progress channel
            "init_timeout": INIT_TIMEOUT_S,
            "finish_timeout": FINISH_TIMEOUT_S,
            "disable_git": True,  # the trainer's working folder says nothing about the job
            "disable_code": True,
            "save_code": False,
            # The .wandb file is written in blocks; a kill -9 loses what was not flushed yet (default 15 s).
            "x_transaction_log_flush_interval": FLUSH_INTERVAL_S,
        }
        known = getattr(wandb.Settings, "model_fields", options)  # private (x_) settings may come and go
        settings = wandb.Settings(**{k: v for k, v in options.items() if k in known})
        return wandb.init(
            project=self.settings.project,
            entity=None,  # the key's default entity (or WANDB_ENTITY): never the job's choice (module docstring)
            name=self.settings.name or self.spec.job_id,
            tags=run_tags(self.spec),
            config=run_config(self.spec),
            id=self.run_id,
            resume="allow",
            dir=str(self.output_dir),
            mode=mode,
            job_type="fine-tune",
            settings=settings,
        )

    def update_config(self, values: Mapping[str, Any]) -> None:
        if self._run is not None and values:
            self._guard(lambda: self._run.config.update(dict(values), allow_val_change=True))

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Log `metrics` at the trainer's optimizer step (W&B's own step; it must not go backwards)."""
        if self._run is not None and metrics:
            self._guard(lambda: self._run.log(dict(metrics), step=step))

    def summarize(self, values: Mapping[str, Any]) -> None:
        if self._run is not None and values:
            self._guard(lambda: self._run.summary.update(dict(values)))

    def finish(self, exit_code: int = 0) -> None:
        """Close the run (idempotent). Offline: quick; online: waits up to FINISH_TIMEOUT_S for uploads."""
        run, self._run = self._run, None
        if run is not None:
            try:
                run.finish(exit_code=exit_code)
            except Exception as exc:
                self._fail(exc)

    def _guard(self, action: Callable[[], Any]) -> None:
        try:
            action()
        except Exception as exc:
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        run, self._run = self._run, None
        if self._failed:
            return
        self._failed = True
        traceback.print_exception(exc, file=sys.stderr)
        self._warn(f"W&B: {type(exc).__name__}: {str(exc)[:500]}; continuing without W&B tracking")
        if run is not None:
            with contextlib.suppress(Exception):
                run.finish(exit_code=1)


_FINAL: dict[str, int] = {"completed": 0, "stopped": 0, "failed": 1}


class TrackedProgressChannel(ProgressChannel):
    """A `ProgressChannel` that passes every message on to `inner` and mirrors it into a W&B run."""

    def __init__(self, inner: ProgressChannel, spec: TrainJobSpec):  # no super().__init__: `inner` owns the channel
        self._inner = inner
        self.tracker = Tracker(spec, warn=lambda message: self.log("warn", message), info=self._info)

    @classmethod
    def start(cls, inner: ProgressChannel, spec: TrainJobSpec) -> TrackedProgressChannel:
        """Wrap `inner` and start the job's W&B run (online, else offline; never raises)."""
        progress = cls(inner, spec)
        progress.tracker.start()
        return progress

    def _info(self, message: str) -> None:
        self.log("info", message)

    def __getattr__(self, name: str) -> Any:  # anything else a ProgressChannel has (only reached when not found here)
        if name == "_inner":
            raise AttributeError(name)
        return getattr(self._inner, name)

    def emit(self, kind: ProgressType, /, **fields: Any) -> None:
        self._inner.emit(kind, **fields)
        if self.tracker.active:
            self._mirror(kind, fields)

    def _mirror(self, kind: str, fields: dict[str, Any]) -> None:
        tracker = self.tracker
        if kind == "started":
            tracker.update_config({k: fields[k] for k in _STARTED_CONFIG if k in fields})
        elif kind == "metrics":
            tracker.log(numeric_fields(fields), step=fields["step"])
        elif kind == "checkpoint":
            metrics = numeric_fields(fields.get("metrics") or {}, prefix="checkpoint/")
            metrics["checkpoint/epoch"] = fields.get("epoch")
            tracker.log({k: v for k, v in metrics.items() if _is_number(v)}, step=fields["step"])
        elif kind in _FINAL:
            summary: dict[str, Any] = {"status": kind, "step": fields.get("step")}
            if kind == "completed":
                summary.update(total_steps=fields.get("total_steps"), trained_tokens=fields.get("trained_tokens"))
            elif kind == "failed":
                summary.update(error_code=fields.get("code"), error_message=fields.get("message"))
            tracker.summarize({k: v for k, v in summary.items() if v is not None})
            tracker.finish(exit_code=_FINAL[kind])


__all__ = ["RUN_ID_FILE", "TrackedProgressChannel", "Tracker", "read_or_create_run_id", "run_config", "run_tags"]
