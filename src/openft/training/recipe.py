"""Fine-tuning (supervised or DPO; LoRA or full) of a causal LM on chat data: the recipe, read top to bottom.

    setup()   find a checkpoint to resume from, pin threads, precision and packing, load data, plan memory
              (micro-batch, checkpointing: `memory_plan`; a job that cannot fit fails here), seed, load the
              model, build the optimizer and LR schedule, restore the checkpoint's state, say `started`
    train()   the loop: one optimizer step per batch, metrics every step, a sampled validation every
              `eval_every` steps, a full one and a checkpoint at each epoch end, a periodic checkpoint
              every `checkpoint_every_steps` / `checkpoint_every_minutes` (so a crash loses little), and a
              stop request honoured between steps (checkpoint, `stopped`)
    save()    final weights + results.csv, then `completed`
    cleanup() close files

What is learned is the objective's business (`objectives`: SFT or DPO: how data is read and tokenized,
how a micro-batch's loss and metrics are computed); how the model runs is `forward.ForwardPass`'s
(packing, LM head at target positions only, bf16 autocast). Everything else is shared and lives here.

Exact resume is the design constraint throughout. The data order of epoch e comes from
`default_rng([seed, e])`, so the step number alone says where in the data training is; every random
generator's state, the optimizer and the scheduler are checkpointed; the thread count, the precision and
packing are pinned to the checkpoint's (CPU float sums depend on them); validation runs in eval mode under
no_grad, so it draws no random numbers. On CPU a run stopped and resumed any number of times ends
bit-identical to a straight one.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from openft.datasets.chat import CODE_FORMAT, DataFormatError
from openft.fsutil import commit_dir, ensure_dir, remove_tree, temp_sibling
from openft.trainer_contract import DEFAULT_MAX_SEQ_LEN, DISK_FULL_REASON, BaseModelSpec, TrainJobSpec
from openft.training import checkpoint as ckpt
from openft.training import distributed, memory_plan
from openft.training.attention import pick_attention, resume_attention
from openft.training.compile import compile_layers
from openft.training.data import PreparedData, epoch_order, validation_sample
from openft.training.forward import ForwardPass, causal_lm, check_model
from openft.training.memory import BadMemoryCap, memory_budget
from openft.training.metrics import METRICS_FILE, RESULTS_FILE, MetricsLog, write_results_csv
from openft.training.model import (
    enable_gradient_checkpointing,
    frozen_dtype,
    load_model,
    pick_device,
    resolve_base,
    resolve_weights,
    save_weights,
)
from openft.training.objectives import Objective, objective_for
from openft.training.precision import Precision, resolve_precision
from openft.training.progress import ProgressChannel
from openft.training.stop import StopRequest

LINES_SHOWN = 20
EVALUATIONS_PER_RUN = 10
"""Sampled validations in a run when the job does not say how often (`eval_every: null`)."""


class TrainingFailure(Exception):
    """A failure with a stable code for the job's `error` (data, model, divergence, checkpoint mismatch)."""

    def __init__(self, code: str, message: str, param: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


class DiskFullPause(Exception):
    """The disk (or quota) filled up while writing `what`: the run stops at its last good checkpoint and the
    job is paused (not failed) so that it can be resumed once there is space. `what` is shown to the job's
    owner, so it names no server path."""

    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


class StepHooks:
    """Two moments of the loop that code outside the recipe may act at; these do nothing.

    The recipe's behaviour never depends on them: they exist so that fault injection (`faults.py`, which
    signals the process at a chosen moment) stays out of the loop. A subclass overrides what it needs.
    """

    def at_step_boundary(self, step: int) -> None:
        """The loop stands at `step` (after that step, its metrics and any checkpoint; or on starting there),
        just before it looks for a stop request."""

    def checkpoint_weights_saved(self, step: int) -> None:
        """The checkpoint of `step` has its weights written and is not committed yet."""


@dataclass
class StepResult:
    metrics: dict[str, float]
    """The objective's `train_*` columns."""
    n_tokens: int
    """Non-padding input tokens processed."""


def _lines(lines: Sequence[int]) -> str:
    shown = ", ".join(str(n) for n in lines[:LINES_SHOWN])
    return shown + (f" and {len(lines) - LINES_SHOWN} more" if len(lines) > LINES_SHOWN else "")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def linear_schedule(warmup_steps: int, total_steps: int) -> Any:
    """LR multiplier for optimizer step s (0-based): linear warmup, then linear decay reaching 0 at total."""

    def multiplier(s: int) -> float:
        if s < warmup_steps:
            return (s + 1) / warmup_steps
        return max(0.0, (total_steps - s) / max(1, total_steps - warmup_steps))

    return multiplier


def eval_interval(total_steps: int, eval_every: int | None) -> int:
    """Steps between sampled validations: the job's choice, or about EVALUATIONS_PER_RUN per run (never 0)."""
    return eval_every or max(1, math.ceil(total_steps / EVALUATIONS_PER_RUN))


class TrainingRecipe:
    def __init__(
        self, spec: TrainJobSpec, progress: ProgressChannel, stop: StopRequest, hooks: StepHooks | None = None
    ):
        self.spec = spec
        self.progress = progress
        self.stop = stop
        self.hooks = hooks or StepHooks()
        self.output_dir = Path(spec.output_dir)
        self.device = pick_device()
        self.objective: Objective = objective_for(spec)
        self.ranks = distributed.current()  # one process, or this one's rank among several (distributed.py)
        self.metrics_log = MetricsLog(self.output_dir / METRICS_FILE) if self.ranks.is_main else distributed.NoMetrics()
        self._checkpoint_clock = time.monotonic()
        self.last_checkpoint: ckpt.Checkpoint | None = None
        self.verified_steps: set[int] = set()
        """Checkpoints known good (written or verified by this process): pruning need not hash them again."""
        # Pinned by setup (`_pin_numerics`): the job's on a fresh start, the checkpoint's on resume.
        self.num_threads: int
        self.attention: str | None
        self.precision: Precision
        self.packing: bool
        self.frozen_weights: Precision
        self.pinned_micro_batch: int | None
        # Chosen by the memory plan (`_plan_memory`, `_fit_memory_to_data`); a resume keeps the micro-batch.
        self.micro_batch_size: int
        self.gradient_checkpointing: bool

    # Setup ---------------------------------------------------------------------------------------

    def setup(self) -> None:
        spec = self.spec
        ensure_dir(self.output_dir)
        if self.ranks.is_main:  # with several ranks, rank 0 alone changes the folder; the others follow it
            ckpt.remove_stale_temps(self.output_dir)
        self.fingerprint = ckpt.fingerprint(spec)

        # 1. Resume point: the newest checkpoint that verifies (a damaged one is reported and removed).
        #    Threads, precision and packing are then pinned: the checkpoint's win over the job's.
        self.resumed_from = self.ranks.on_main(self._find_resume_checkpoint)
        resume = ckpt.read_state(self.resumed_from) if self.resumed_from is not None else None
        if resume is not None and resume[0].workers != self.ranks.world_size:
            raise TrainingFailure(
                "checkpoint_mismatch",
                f"the checkpoint at step {resume[0].step} was written by {resume[0].workers} worker process(es); "
                f"resume it with compute.workers {resume[0].workers} (how the batch is split across processes "
                "changes the results)",
            )
        if resume is not None and resume[0].fingerprint != self.fingerprint:
            raise TrainingFailure(
                "checkpoint_mismatch",
                f"the checkpoint at step {resume[0].step} was made with other data or settings; "
                "it cannot be resumed with this job",
            )
        self._pin_numerics(resume[0] if resume is not None else None)
        torch.set_num_threads(self.num_threads)

        # 2. Data, read before the (slow) model load so a bad file fails fast.
        train_examples = self._read(spec.training_file, "training_file")
        valid_examples = self._read(spec.validation_file, "validation_file") if spec.validation_file else None

        # 2b. Memory, from the config alone: a job that cannot fit fails here, before the model is loaded.
        self._plan_memory()

        # 3. Model. Seeded first: LoRA's initialisation draws from torch's generator.
        seed_everything(spec.seed)
        resume_weights = self.resumed_from.weights_dir if self.resumed_from else None
        self.loaded = load_model(  # `attention`: the kernel packed rows are described for (attention.py)
            spec, resume_weights=resume_weights, frozen=self.frozen_weights, attn_implementation=self.attention
        )
        self.objective.attach(self.loaded, spec)  # DPO: the reference policy
        self.ranks.seed(spec.seed)  # several ranks: each its own dropout masks from here (distributed.py)
        for note in self.loaded.notes:
            self.progress.log("info", note)
        self.progress.log(
            "info",
            f"Loaded base model {spec.base_model.name} ({self.loaded.n_params:,} params, "
            f"{self.loaded.n_trainable:,} trainable, {'LoRA' if self.loaded.is_lora else 'full fine-tuning'}, "
            f"{spec.method}, {self.device.type}, {self.num_threads} threads, frozen weights {self.frozen_weights})",
        )
        self.max_seq_len = self._max_seq_len()
        self.train_data = self._tokenize(train_examples, "training_file").examples
        self.valid_data = self._tokenize(valid_examples, "validation_file").examples if valid_examples else None
        self.valid_sample = None
        if self.valid_data:
            picked = validation_sample(spec.seed, len(self.valid_data), spec.eval_samples)
            self.valid_sample = [self.valid_data[i] for i in picked]
        self._fit_memory_to_data()

        # 4. How the model runs: the fast paths this model was checked to support (eval mode, no RNG).
        pad_id = self.loaded.tokenizer.pad_token_id
        support = check_model(self.loaded.model, pad_id, self.device)
        if self.packing and not support.packing:
            self.packing = False
            self.progress.log("info", "packing is off: this model does not keep packed examples apart")
        split_head = support.split_head and not self.ranks.will_shard(self.loaded)  # FSDP2: see distributed.py
        self.forward = ForwardPass(pad_id, self.packing, split_head, self.device, self.precision)
        checkpointing = self.gradient_checkpointing
        if checkpointing:
            enable_gradient_checkpointing(self.loaded.model)
        compiled = compile_layers(self.loaded.model) if spec.compile else 0  # after LoRA and checkpointing: compile.py
        self.ranks.shard(self.loaded)  # full fine-tuning with several ranks: FSDP2, before the optimizer is built
        self.progress.log(
            "info",
            f"Forward pass: {self.precision}, packing {'on' if self.packing else 'off'}, attention "
            f"{causal_lm(self.loaded.model).config._attn_implementation}, LM head "
            f"{'at target tokens only' if split_head else 'at every token'}, "
            f"{f'{compiled} decoder layers compiled, ' if compiled else ''}gradient checkpointing "
            f"{'on' if checkpointing else 'off'}",
        )

        # 5. Plan: steps per epoch (the last batch of an epoch may be smaller), LR schedule, validation cadence.
        self.batch_size = spec.hyperparameters.batch_size
        self.steps_per_epoch = math.ceil(len(self.train_data) / self.batch_size)
        self.total_steps = spec.hyperparameters.n_epochs * self.steps_per_epoch
        params = [p for p in self.loaded.model.parameters() if p.requires_grad]
        lr = spec.base_learning_rate * spec.hyperparameters.learning_rate_multiplier
        self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=spec.weight_decay)
        warmup = math.ceil(spec.warmup_ratio * self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, linear_schedule(warmup, self.total_steps))
        self.eval_every = eval_interval(self.total_steps, spec.eval_every)

        # 6. Restore the checkpoint's state, random generators last (everything above may draw from them).
        self.step = 0
        self.trained_tokens = 0
        self.last_checkpoint = self.resumed_from
        if resume is not None:
            saved, state = resume
            self.step, self.trained_tokens = saved.step, saved.trained_tokens
            if self.step > self.total_steps or (saved.epoch, saved.position) != divmod(self.step, self.steps_per_epoch):
                raise TrainingFailure("checkpoint_mismatch", "the checkpoint does not fit this job's training plan")
            if self.ranks.distributed:  # each rank's part through torch.distributed.checkpoint, its own RNG state
                assert self.resumed_from is not None
                model, optimizer = self.loaded.model, self.optimizer
                rng = distributed.read_checkpoint(self.ranks, self.resumed_from, state, model, optimizer)
            else:
                self.optimizer.load_state_dict(state["optimizer"])
                rng = state["rng"]
            self.scheduler.load_state_dict(state["scheduler"])
            ckpt.restore_rng(rng)
        self.start_step = self.step
        with self._disk_full_pauses(f"preparing to resume at step {self.step}"):
            self.metrics_log.restart_after(self.step)  # each step exactly once, even after a kill -9
        self.last_row: dict[str, Any] | None = None

        self._checkpoint_clock = time.monotonic()  # the periodic interval counts from here, not from the load
        self.progress.emit(
            "started",
            total_steps=self.total_steps,
            start_step=self.start_step,
            steps_per_epoch=self.steps_per_epoch,
            n_examples=len(self.train_data),
            trainable_params=self.loaded.n_trainable,
            num_threads=self.num_threads,
            resumed_from=str(self.resumed_from.path) if self.resumed_from else None,
            checkpoints=self._checkpoints_on_disk(),
        )

    def _checkpoints_on_disk(self) -> list[dict[str, Any]]:
        """Every committed checkpoint (the resume point and older ones) with its meta.json's description.

        A worker that died may not have recorded some (their messages were still in the pipe), or may have
        recorded ones pruned since; this list is what the new worker makes its records match.
        """
        found = []
        for candidate in ckpt.list_checkpoints(self.output_dir):
            try:
                meta = candidate.meta()
            except (OSError, ValueError):
                continue  # unreadable (and not the resume point, which was verified): not offered as a model
            found.append(
                {
                    "step": candidate.step,
                    "epoch": meta.get("epoch"),
                    "kind": meta.get("kind"),
                    "path": str(candidate.path),
                    "metrics": meta.get("metrics") or {"step": candidate.step},
                }
            )
        return found

    def _pin_numerics(self, saved: ckpt.LoopState | None) -> None:
        """Thread count, precision, packing, the frozen weights' dtype, the attention kernel and the micro-batch:
        the job's on a fresh start (the micro-batch then comes from the memory plan), the checkpoint's on resume.

        Each changes how floats are summed, so a resume that changed one would not continue exactly.
        """
        spec = self.spec
        precision = resolve_precision(spec.precision, self.device)
        if saved is None:
            self.num_threads = spec.num_threads or torch.get_num_threads()
            self.precision, self.packing = precision, spec.packing
            self.frozen_weights = frozen_dtype(spec, precision)
            self.pinned_micro_batch = None
            self.attention = pick_attention(self.device, precision)
            return
        self.num_threads, self.precision, self.packing = saved.num_threads, saved.precision, saved.packing
        self.pinned_micro_batch = saved.micro_batch_size or spec.micro_batch_size  # None: written before the planner
        self.frozen_weights = saved.frozen_weights  # the base the adapters were trained against, rounded alike
        self.attention, problem = resume_attention(saved.attention, self.device, saved.precision)
        if problem is not None:
            self.progress.log("warn", problem)
        if spec.num_threads is not None and spec.num_threads != saved.num_threads:
            self.progress.log(
                "warn",
                f"using {saved.num_threads} threads as the checkpoint did (the job asks for "
                f"{spec.num_threads}): another thread count would change the results",
            )
        # Packing may be off in the checkpoint because the model cannot pack: only a job that turned it off counts.
        if precision != saved.precision or (saved.packing and not spec.packing):
            self.progress.log(
                "warn",
                f"using the checkpoint's precision ({saved.precision}) and packing "
                f"({'on' if saved.packing else 'off'}): other settings would change the results",
            )

    def _plan_memory(self) -> None:
        """Whether the job can fit this device at all, from the base's config.json alone (`memory_plan`), before the
        model is loaded: with every example taken as max_seq_len tokens long, a job that cannot fit even so fails
        now, with `out_of_memory` and what would fit. A config the planner cannot read: no plan (the job's
        micro-batch, checkpointing only where the job asks for it)."""
        spec = self.spec
        self.memory: tuple[memory_plan.ModelShape, memory_plan.TrainingSetup, int | None] | None = None
        self.micro_batch_size = self.pinned_micro_batch or spec.micro_batch_size
        self.gradient_checkpointing = spec.gradient_checkpointing is True
        base, adapter = resolve_base(spec)
        config = _read_json(base / "config.json")
        shape = memory_plan.ModelShape.from_config(config) if config is not None else None
        if shape is None:
            self.progress.log("info", "Memory plan: none (the model's config.json does not say its shape)")
            return
        setup = memory_plan.job_setup(
            spec,
            precision=self.precision,
            frozen=self.frozen_weights,
            seq_len=memory_plan.sequence_length(spec.max_seq_len, shape.context),
            cuda=self.device.type == "cuda",
            adapter_config=_read_json(adapter / "adapter_config.json") if adapter is not None else None,
        )
        if spec.reinforcement is not None and spec.reinforcement.judges:
            setup = replace(setup, judge_bytes=self._judge_bytes(spec.reinforcement.judges))
        try:
            free = memory_budget(self.device)
        except BadMemoryCap as exc:
            raise TrainingFailure("training_error", str(exc)) from exc
        known = [b for b in self.ranks.gather(free) if b is not None]  # every rank must fit, and agree on the plan
        sharing = self.ranks.world_size if self.device.type == "cpu" else 1  # ranks on a CPU share its memory
        budget = min(known) // sharing if known else None
        plan = memory_plan.plan(shape, setup, budget, micro_batch_size=self.pinned_micro_batch)
        if plan.fits is False:
            where = "this GPU" if self.device.type == "cuda" else "this machine"
            raise TrainingFailure("out_of_memory", memory_plan.failure_message(plan, setup, where))
        self.memory = (shape, setup, budget)

    def _judge_bytes(self, judges: dict[str, BaseModelSpec]) -> int:
        """The weights of a reinforcement job's judges (training/judges.py), from their configs."""
        configs = []
        for judge in judges.values():
            folder, _ = resolve_weights(judge, Path(self.spec.cache_dir), max_bytes=self.spec.max_model_bytes)
            config = _read_json(folder / "config.json")
            if config is not None:
                configs.append(config)
        return memory_plan.judge_weight_bytes(configs, cuda=self.device.type == "cuda")

    def _fit_memory_to_data(self) -> None:
        """The micro-batch and gradient checkpointing for the data as tokenized (a micro-batch holds at most its size
        × the longest example's tokens), against the memory measured before the load. A resumed job keeps its
        checkpoint's micro-batch (it changes the float sums); checkpointing changes memory and time, never results
        (the recomputation is exact), so it is planned anew."""
        if self.memory is None:
            return
        shape, setup, budget = self.memory
        setup = memory_plan.for_examples(setup, max(self.objective.n_tokens(item) for item in self.train_data))
        plan = memory_plan.plan(shape, setup, budget, micro_batch_size=self.pinned_micro_batch)
        self.micro_batch_size, self.gradient_checkpointing = plan.micro_batch_size, plan.gradient_checkpointing
        self.progress.log("info", memory_plan.describe(plan, setup))

    def _find_resume_checkpoint(self) -> ckpt.Checkpoint | None:
        for candidate in reversed(ckpt.list_checkpoints(self.output_dir)):
            problem = ckpt.verify(candidate)
            if problem is None:
                self.verified_steps.add(candidate.step)
                return candidate
            # Moved out of the way (its steps are trained again, and a rewrite of that step would replace
            # it), never deleted: it may be readable again later, and it is for the operator to decide.
            aside = ckpt.set_aside(candidate)
            self._report_damaged(candidate, problem, aside, "using an older one")
        return None

    def _report_damaged(self, checkpoint: ckpt.Checkpoint, problem: str, aside: Path, then: str) -> None:
        """Warn the job's owner (no server path) and tell the operator where the damaged folder went."""
        text = f"checkpoint at step {checkpoint.step} is damaged ({problem}); kept it aside for the operator, {then}"
        self.progress.log("warn", text)
        print(f"damaged checkpoint of step {checkpoint.step} moved to {aside}", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def _disk_full_pauses(self, what: str) -> Iterator[None]:
        """Turn a full disk (or quota) while doing `what` into `DiskFullPause`; other errors pass unchanged."""
        try:
            yield
        except ckpt.DiskFull as exc:
            print(f"disk full: {exc}", file=sys.stderr, flush=True)
            raise DiskFullPause(what) from exc
        except Exception as exc:
            if not ckpt.is_disk_full(exc, self.output_dir):
                raise
            print(f"disk full in {self.output_dir} while {what}: {exc!r}", file=sys.stderr, flush=True)
            raise DiskFullPause(what) from exc

    def _read(self, path: str, param: str) -> list[Any]:
        try:
            return self.objective.read(Path(path))
        except DataFormatError as exc:
            raise TrainingFailure(exc.problem.code, f"{param}: {exc.problem}", param) from exc
        except OSError as exc:
            raise TrainingFailure(CODE_FORMAT, f"{param}: cannot read the file ({exc})", param) from exc

    def _max_seq_len(self) -> int:
        context = self.loaded.context_length
        wanted = self.spec.max_seq_len or min(context or DEFAULT_MAX_SEQ_LEN, DEFAULT_MAX_SEQ_LEN)
        if context is not None and wanted > context:
            self.progress.log("warn", f"max_seq_len {wanted} is longer than the model's context; using {context}")
            return context
        return wanted

    def _tokenize(self, examples: list[Any], param: str) -> PreparedData[Any]:
        try:
            prepared = self.objective.tokenize(self.loaded.tokenizer, examples, max_seq_len=self.max_seq_len)
        except DataFormatError as exc:
            raise TrainingFailure(exc.problem.code, f"{param}: {exc.problem}", param) from exc
        if prepared.truncated_lines:
            n = len(prepared.truncated_lines)
            self.progress.log(
                "warn",
                f"{param}: {n} example(s) longer than {self.max_seq_len} tokens were truncated "
                f"(lines {_lines(prepared.truncated_lines)})",
            )
        if prepared.skipped_lines:
            n = len(prepared.skipped_lines)
            self.progress.log(
                "warn",
                f"{param}: {n} example(s) have no trainable assistant token within {self.max_seq_len} tokens "
                f"and are skipped (lines {_lines(prepared.skipped_lines)})",
            )
        if not prepared.examples:
            raise TrainingFailure(
                CODE_FORMAT,
                f"{param}: no example has a trainable assistant token within {self.max_seq_len} tokens",
                param,
            )
        return prepared

    # Train ---------------------------------------------------------------------------------------

    def train(self) -> Literal["completed", "stopped"]:
        spec, order, order_epoch = self.spec, [], -1
        columns = self.objective.columns
        # Wall clocks for `step_seconds`: the worker's ETA, so they include evaluation and checkpoint time.
        self._row_clock = self._message_clock = time.perf_counter()
        self._message_step = self.step
        while self.step < self.total_steps:
            self.hooks.at_step_boundary(self.step)
            if self.ranks.agree_to_stop(self.stop):  # several ranks: all stop after the same step
                self._stop()
                return "stopped"
            epoch, position = divmod(self.step, self.steps_per_epoch)
            if epoch != order_epoch:
                order, order_epoch = epoch_order(spec.seed, epoch, len(self.train_data)), epoch
            batch = [self.train_data[i] for i in order[position * self.batch_size : (position + 1) * self.batch_size]]

            learning_rate = self.scheduler.get_last_lr()[0]
            self.objective.at_step(self.step)
            result = self._train_step(batch)
            for note in self.objective.notes():  # RFT: answers its grader could not score
                self.progress.log("warn", note)
            self.step += 1
            self.trained_tokens += result.n_tokens
            epoch_end = position == self.steps_per_epoch - 1

            row: dict[str, Any] = {"step": self.step, "epoch": epoch + 1, **dict.fromkeys(columns[1:])}
            row.update(result.metrics)
            row.update(self._validate(epoch_end))
            for note in self.objective.notes():
                self.progress.log("warn", note)
            now = time.perf_counter()
            row.update(learning_rate=learning_rate, trained_tokens=self.trained_tokens)
            row["step_seconds"] = now - self._row_clock  # this step, its validation, the checkpoint before it
            self._row_clock = now
            with self._disk_full_pauses(f"recording the metrics of step {self.step}"):
                self.metrics_log.append(row)
            self.last_row = row
            if self.step % spec.metrics_every == 0 or self.step == self.total_steps or epoch_end:
                self._emit_metrics(row, now)
            if epoch_end:
                self._checkpoint("epoch")
            elif self.ranks.agree(self._periodic_checkpoint_due()):  # the wall clock may differ between ranks
                self._checkpoint("periodic")
        return "completed"  # a stop asked for during the last step: finishing costs less than pausing

    def _periodic_checkpoint_due(self) -> bool:
        """Every `checkpoint_every_steps` steps, or once `checkpoint_every_minutes` passed since the last one.

        Never at the last step (the final weights follow at once). Writing a checkpoint draws no random
        numbers and changes no state, so when one happens (wall-clock dependent) cannot change the results.
        """
        spec = self.spec
        if self.step >= self.total_steps:
            return False
        if spec.checkpoint_every_steps and self.step % spec.checkpoint_every_steps == 0:
            return True
        minutes = spec.checkpoint_every_minutes
        return minutes is not None and time.monotonic() - self._checkpoint_clock >= minutes * 60

    def _validate(self, epoch_end: bool) -> dict[str, float]:
        """The sampled validation every eval_every steps (and at the last), the whole file at epoch ends."""
        metrics: dict[str, float] = {}
        if self.valid_sample and (self.step % self.eval_every == 0 or self.step == self.total_steps):
            metrics.update(self._evaluate(self.valid_sample, "valid_"))
        if epoch_end and self.valid_data:
            metrics.update(self._evaluate(self.valid_data, "full_valid_"))
        broken = [name for name, value in metrics.items() if not math.isfinite(value)]
        if broken:  # the training loss was still finite, but this step's weights are not usable
            raise TrainingFailure(
                "training_diverged",
                f"{broken[0]} became {metrics[broken[0]]} at step {self.step}; try a lower learning_rate_multiplier",
            )
        return metrics

    def _emit_metrics(self, row: dict[str, Any], now: float) -> None:
        """A metrics message; its step_seconds is the wall time per step since the previous message."""
        fields = {k: v for k, v in row.items() if v is not None or k not in self.objective.columns}
        fields["step_seconds"] = (now - self._message_clock) / (self.step - self._message_step)
        self._message_clock, self._message_step = now, self.step
        self.progress.emit("metrics", total_steps=self.total_steps, **fields)

    def _train_step(self, batch: Sequence[Any]) -> StepResult:
        """One optimizer step over `batch`, in micro-batches whose gradients add up to the whole batch's.

        Each micro-batch's loss *sum* is divided by the units (target tokens, or pairs) of the whole
        batch, so the accumulated gradient equals that of one big batch, however the batch is split.
        """
        objective, model = self.objective, self.loaded.model
        units = sum(objective.units(item) for item in batch)
        totals: dict[str, torch.Tensor] = {}
        plan = self.ranks.micro_batches(batch, self.micro_batch_size)  # this rank's share: all of it in one process
        for i, (micro, counts) in enumerate(plan):
            with self.ranks.gradient_sync(model, last=i == len(plan) - 1):
                sums = objective.sums(model, micro, self.forward)
                (sums["loss"] / units if counts else sums["loss"] * 0.0).backward()  # FSDP2's filler adds 0
            if not counts:
                continue
            for name, value in sums.items():
                totals[name] = totals[name] + value.detach() if name in totals else value.detach()
        values = {name: value.item() for name, value in totals.items()}  # host-device sync point
        values = self.ranks.sum_values(values)  # several ranks: the whole batch's sums
        loss = values["loss"] / units
        if not math.isfinite(loss):
            raise TrainingFailure(
                "training_diverged",
                f"the training loss became {loss} at step {self.step + 1}; try a lower learning_rate_multiplier",
            )
        self.ranks.sum_gradients(self.optimizer.param_groups[0]["params"])  # several ranks: the batch's gradient
        if self.spec.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.optimizer.param_groups[0]["params"], self.spec.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(objective.metrics(values, units, "train_"), objective.step_tokens(batch))

    @torch.no_grad()
    def _evaluate(self, items: Sequence[Any], prefix: str) -> dict[str, float]:
        """The objective's metrics over `items` in eval mode: no dropout, so no random numbers drawn."""
        model = self.loaded.model
        model.eval()
        totals: dict[str, float] = {}
        try:
            for micro, counts in self.ranks.micro_batches(items, self.micro_batch_size):
                sums = self.objective.sums(model, micro, self.forward)
                for name, value in sums.items() if counts else ():
                    totals[name] = totals.get(name, 0.0) + value.item()
        finally:
            model.train()
        totals = self.ranks.sum_values(totals)
        return self.objective.metrics(totals, sum(self.objective.units(item) for item in items), prefix)

    def _checkpoint(self, kind: ckpt.CheckpointKind) -> ckpt.Checkpoint:
        """Commit a checkpoint of the current step, say so, and prune the oldest beyond keep_checkpoints."""
        epoch = (self.step - 1) // self.steps_per_epoch + 1
        metrics = {"step": self.step, **{k: (self.last_row or {}).get(k) for k in self.objective.columns[1:]}}
        with self._disk_full_pauses(f"writing checkpoint at step {self.step}"):
            saved = self._write_checkpoint(kind, epoch, metrics)
        self.last_checkpoint = saved
        self.verified_steps.add(saved.step)  # hashed as it was written
        self._checkpoint_clock = time.monotonic()
        self.progress.emit("checkpoint", step=self.step, epoch=epoch, path=str(saved.path), kind=kind, metrics=metrics)
        pruned = (
            ckpt.prune(self.output_dir, self.spec.keep_checkpoints, verified=self.verified_steps)
            if self.ranks.is_main
            else ckpt.Pruned()
        )
        for checkpoint, problem, aside in pruned.set_aside:
            self._report_damaged(checkpoint, problem, aside, "not counted as one of the checkpoints kept")
        for removed in [*pruned.removed, *(c for c, _, _ in pruned.set_aside)]:
            self.progress.emit("checkpoint_removed", step=removed.step, path=str(removed.path))
        return saved

    def _write_checkpoint(self, kind: ckpt.CheckpointKind, epoch: int, metrics: dict[str, Any]) -> ckpt.Checkpoint:
        self.metrics_log.sync()  # the checkpoint's steps must be on disk before it is
        next_epoch, position = divmod(self.step, self.steps_per_epoch)  # 0-based, for resume; `epoch` is 1-based
        state = ckpt.LoopState(
            self.step,
            next_epoch,
            position,
            self.trained_tokens,
            self.num_threads,
            self.fingerprint,
            precision=self.precision,
            packing=self.packing,
            frozen_weights=self.frozen_weights,
            micro_batch_size=self.micro_batch_size,
            workers=self.ranks.world_size,
            attention=self.attention,
        )
        if self.ranks.distributed:
            return distributed.write_checkpoint(
                self.ranks,
                self.output_dir,
                loop_state=state,
                epoch=epoch,
                kind=kind,
                metrics=metrics,
                scheduler=self.scheduler.state_dict(),
                loaded=self.loaded,
                optimizer=self.optimizer,
                weights_saved=lambda: self.hooks.checkpoint_weights_saved(self.step),
            )
        return ckpt.write_checkpoint(
            self.output_dir,
            loop_state=state,
            epoch=epoch,
            kind=kind,
            metrics=metrics,
            trainer_state={
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": ckpt.capture_rng(),
            },
            save_weights=self._save_checkpoint_weights,
            weights_dir="adapter" if self.loaded.is_lora else "model",
        )

    def _save_checkpoint_weights(self, dest: Path) -> None:
        save_weights(self.loaded, dest)
        self.hooks.checkpoint_weights_saved(self.step)

    def _stop(self) -> None:
        """Honour a stop request between steps: checkpoint the progress made (if any), say `stopped`."""
        # With no step since start, the newest checkpoint (the one resumed from, or none) is still current;
        # right after an epoch-end checkpoint there is nothing new to save either.
        if self.step > self.start_step and (self.last_checkpoint is None or self.last_checkpoint.step != self.step):
            self._checkpoint("pause")
        path = str(self.last_checkpoint.path) if self.last_checkpoint else None
        self.progress.log("info", f"stopped by {self.stop.signal_name} after step {self.step}")
        self.progress.emit("stopped", step=self.step, checkpoint=path)

    # Save and clean up ---------------------------------------------------------------------------

    def save(self) -> None:
        """The final weights (output_dir/model/) and results.csv, then `completed`."""
        final = self.output_dir / "model"
        results = self.output_dir / RESULTS_FILE
        if not self.ranks.is_main:  # rank 0 writes; with FSDP2 the others help gather the whole weights first
            distributed.save_weights(self.ranks, self.loaded, None)
            return
        with self._disk_full_pauses(f"writing the final model at step {self.step}"):
            tmp = temp_sibling(final)
            try:
                distributed.save_weights(self.ranks, self.loaded, tmp)
                commit_dir(tmp, final)
            except BaseException as exc:
                full = isinstance(exc, Exception) and ckpt.is_disk_full(exc, self.output_dir)
                remove_tree(tmp)
                if full:
                    raise ckpt.DiskFull(self.step, self.output_dir) from exc
                raise
            self.metrics_log.sync()
            write_results_csv(self.output_dir / METRICS_FILE, results, self.objective.columns)
        self.progress.emit(
            "completed",
            step=self.step,
            total_steps=self.total_steps,
            trained_tokens=self.trained_tokens,
            model_path=str(final),
            results_path=str(results),
        )

    def cleanup(self) -> None:
        self.metrics_log.close()


def run_recipe(
    spec: TrainJobSpec, progress: ProgressChannel, stop: StopRequest, hooks: StepHooks | None = None
) -> Literal["completed", "stopped"]:
    """setup → train → save → cleanup, for every method (the objective is chosen from `spec.method`)."""
    recipe = TrainingRecipe(spec, progress, stop, hooks)
    try:
        if distributed.current().agree_to_stop(stop):  # asked to stop before anything was loaded: nothing to save
            newest = _newest_good_checkpoint(recipe.output_dir)
            progress.emit("stopped", step=newest.step if newest else 0, checkpoint=str(newest.path) if newest else None)
            return "stopped"
        try:
            recipe.setup()
            outcome = recipe.train()
            if outcome == "completed":
                recipe.save()
        except DiskFullPause as paused:
            _stopped_by_full_disk(recipe, progress, paused)
            return "stopped"
        return outcome
    finally:
        recipe.cleanup()


def _read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from `path`, or None when it is missing, unreadable or not an object."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _newest_good_checkpoint(output_dir: Path) -> ckpt.Checkpoint | None:
    """The newest checkpoint that verifies (damaged ones are left where they are), or None."""
    return next((c for c in reversed(ckpt.list_checkpoints(output_dir)) if ckpt.verify(c) is None), None)


def _stopped_by_full_disk(recipe: TrainingRecipe, progress: ProgressChannel, paused: DiskFullPause) -> None:
    """Say `stopped` (reason disk_full) at the newest good checkpoint, which the resume will continue from."""
    newest = recipe.last_checkpoint
    if newest is None or not newest.path.is_dir():
        newest = _newest_good_checkpoint(recipe.output_dir)
    progress.emit(
        "stopped",
        step=newest.step if newest else 0,
        checkpoint=str(newest.path) if newest else None,
        reason=DISK_FULL_REASON,
        message=f"paused: the disk is full while {paused.what}; free space and resume",
    )


__all__ = [
    "DISK_FULL_REASON",
    "DiskFullPause",
    "StepHooks",
    "StopRequest",
    "TrainingFailure",
    "TrainingRecipe",
    "run_recipe",
]
