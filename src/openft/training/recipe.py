"""Supervised fine-tuning (LoRA or full) of a causal LM on chat data: the recipe, read top to bottom.

    setup()   find a checkpoint to resume from, pin threads and seeds, load data and model, build the
              optimizer and LR schedule, restore the checkpoint's state, say `started`
    train()   the loop: one optimizer step per batch, metrics every step, a checkpoint at each epoch end,
              and a stop request honoured between steps (checkpoint, `stopped`)
    save()    final weights + results.csv, then `completed`
    cleanup() close files

Exact resume is the design constraint throughout. The data order of epoch e comes from
`default_rng([seed, e])`, so the step number alone says where in the data training is; every random
generator's state, the optimizer and the scheduler are checkpointed; the thread count is pinned to the
checkpoint's (CPU float sums depend on it); validation runs in eval mode under no_grad, so it draws no
random numbers. On CPU a run stopped and resumed any number of times ends bit-identical to a straight one.
"""

from __future__ import annotations

import math
import os
import random
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from openft.datasets.chat import CODE_FORMAT, DataFormatError, read_examples
from openft.fsutil import commit_dir, remove_tree, temp_sibling
from openft.jobspec import RESULT_COLUMNS, TrainJobSpec
from openft.training import checkpoint as ckpt
from openft.training.data import IGNORE_INDEX, PreparedData, TokenizedExample, collate, epoch_order, micro_batches
from openft.training.data import prepare as prepare_data
from openft.training.metrics import METRICS_FILE, RESULTS_FILE, MetricsLog, write_results_csv
from openft.training.model import load_model, pick_device, save_weights
from openft.training.progress import Progress

DEFAULT_MAX_SEQ_LEN = 2048
LINES_SHOWN = 20
CHECKPOINT_METRICS = RESULT_COLUMNS[1:]
"""A checkpoint's metrics: the result-file columns (null where not computed)."""
DEBUG_SIGNALS_ENV = "OPENFT_TRAIN_DEBUG_SIGNALS"
"""Fault injection for tests: "3:SIGUSR1,5:SIGKILL" makes the process signal itself when it stands at step 3
(after that step, its metrics and any checkpoint; or on starting there) and at step 5. 0 = before any step."""


class TrainingFailure(Exception):
    """A failure with a stable code for the job's `error` (data, model, divergence, checkpoint mismatch)."""

    def __init__(self, code: str, message: str, param: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


class StopRequest:
    """Set from a signal handler, or when the worker that started us is gone; looked at between optimizer
    steps only. An orphaned trainer must not keep writing checkpoints that a new worker will also write, so
    it stops at the next step boundary (with a checkpoint) when its parent process changes."""

    def __init__(self, parent_pid: int | None = None) -> None:
        self._requested = False
        self.signal_name: str | None = None
        self.parent_pid = parent_pid

    @property
    def requested(self) -> bool:
        if not self._requested and self.parent_pid is not None and os.getppid() != self.parent_pid:
            self._requested, self.signal_name = True, "the exit of the worker that started it"
        return self._requested

    def __call__(self, signum: int, _frame: Any) -> None:
        self._requested = True
        self.signal_name = signal.Signals(signum).name


@dataclass
class StepResult:
    loss: float
    accuracy: float
    n_tokens: int
    """Non-padding input tokens processed."""
    seconds: float


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


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of cross-entropies, number of correct argmax predictions) over the target tokens.

    Position i predicts token i+1, so logits and labels are shifted against each other.
    """
    logits, labels = logits[:, :-1, :], labels[:, 1:]
    targets = labels != IGNORE_INDEX
    picked, wanted = logits[targets].float(), labels[targets]
    loss_sum = F.cross_entropy(picked, wanted, reduction="sum")
    correct = (picked.argmax(dim=-1) == wanted).sum()
    return loss_sum, correct


class SupervisedRecipe:
    def __init__(self, spec: TrainJobSpec, progress: Progress, stop: StopRequest):
        self.spec = spec
        self.progress = progress
        self.stop = stop
        self.output_dir = Path(spec.output_dir)
        self.device = pick_device()
        self.metrics_log = MetricsLog(self.output_dir / METRICS_FILE)
        self.debug_signals = _parse_debug_signals(os.environ.get(DEBUG_SIGNALS_ENV, ""))

    # Setup ---------------------------------------------------------------------------------------

    def setup(self) -> None:
        spec = self.spec
        self.output_dir.mkdir(parents=True, exist_ok=True)
        ckpt.remove_stale_temps(self.output_dir)
        self.fingerprint = ckpt.fingerprint(spec)

        # 1. Resume point: the newest checkpoint that verifies (a damaged one is reported and removed).
        self.resumed_from = self._find_resume_checkpoint()
        resume = ckpt.read_state(self.resumed_from) if self.resumed_from is not None else None
        if resume is not None:
            saved = resume[0]
            if saved.fingerprint != self.fingerprint:
                raise TrainingFailure(
                    "checkpoint_mismatch",
                    f"the checkpoint at step {saved.step} was made with other data or settings; "
                    "it cannot be resumed with this job",
                )
            self.num_threads = saved.num_threads
            if spec.num_threads is not None and spec.num_threads != saved.num_threads:
                self.progress.log(
                    "warn",
                    f"using {saved.num_threads} threads as the checkpoint did (the job asks for "
                    f"{spec.num_threads}): another thread count would change the results",
                )
        else:
            self.num_threads = spec.num_threads or torch.get_num_threads()
        torch.set_num_threads(self.num_threads)

        # 2. Data, read before the (slow) model load so a bad file fails fast.
        train_examples = self._read(spec.training_file, "training_file")
        valid_examples = self._read(spec.validation_file, "validation_file") if spec.validation_file else None

        # 3. Model. Seeded first: LoRA's initialisation draws from torch's generator.
        seed_everything(spec.seed)
        self.loaded = load_model(spec, resume_weights=self.resumed_from.weights_dir if self.resumed_from else None)
        for note in self.loaded.notes:
            self.progress.log("info", note)
        self.progress.log(
            "info",
            f"Loaded base model {spec.base_model.name} ({self.loaded.n_params:,} params, "
            f"{self.loaded.n_trainable:,} trainable, {'LoRA' if self.loaded.is_lora else 'full fine-tuning'}, "
            f"{self.device.type}, {self.num_threads} threads)",
        )
        self.max_seq_len = self._max_seq_len()
        self.train_data = self._tokenize(train_examples, "training_file").examples
        self.valid_data = self._tokenize(valid_examples, "validation_file").examples if valid_examples else None

        # 4. Plan: steps per epoch (the last batch of an epoch may be smaller) and the LR schedule.
        self.batch_size = spec.hyperparameters.batch_size
        self.steps_per_epoch = math.ceil(len(self.train_data) / self.batch_size)
        self.total_steps = spec.hyperparameters.n_epochs * self.steps_per_epoch
        params = [p for p in self.loaded.model.parameters() if p.requires_grad]
        lr = spec.base_learning_rate * spec.hyperparameters.learning_rate_multiplier
        self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=spec.weight_decay)
        warmup = math.ceil(spec.warmup_ratio * self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, linear_schedule(warmup, self.total_steps))

        # 5. Restore the checkpoint's state, random generators last (everything above may draw from them).
        self.step = 0
        self.trained_tokens = 0
        self.last_checkpoint: ckpt.Checkpoint | None = self.resumed_from
        if resume is not None:
            saved, state = resume
            self.step, self.trained_tokens = saved.step, saved.trained_tokens
            if self.step > self.total_steps or (saved.epoch, saved.position) != divmod(self.step, self.steps_per_epoch):
                raise TrainingFailure("checkpoint_mismatch", "the checkpoint does not fit this job's training plan")
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            ckpt.restore_rng(state["rng"])
        self.start_step = self.step
        self.metrics_log.restart_after(self.step)  # each step exactly once, even after a kill -9
        self.last_row: dict[str, Any] | None = None

        self.progress.emit(
            "started",
            total_steps=self.total_steps,
            start_step=self.start_step,
            n_examples=len(self.train_data),
            trainable_params=self.loaded.n_trainable,
            num_threads=self.num_threads,
            resumed_from=str(self.resumed_from.path) if self.resumed_from else None,
        )

    def _find_resume_checkpoint(self) -> ckpt.Checkpoint | None:
        for candidate in reversed(ckpt.list_checkpoints(self.output_dir)):
            problem = ckpt.verify(candidate)
            if problem is None:
                return candidate
            # Its steps will be trained again and it would be overwritten anyway; left in place it
            # would count as "newest" when pruning.
            self.progress.log(
                "warn", f"checkpoint at step {candidate.step} is damaged ({problem}); removed it, using an older one"
            )
            remove_tree(candidate.path)
        return None

    def _read(self, path: str, param: str) -> list[Any]:
        try:
            return read_examples(Path(path))
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

    def _tokenize(self, examples: list[Any], param: str) -> PreparedData:
        try:
            prepared = prepare_data(self.loaded.tokenizer, examples, max_seq_len=self.max_seq_len)
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
        while self.step < self.total_steps:
            if self.step in self.debug_signals:  # fault injection (tests): as if signalled right here
                os.kill(os.getpid(), self.debug_signals.pop(self.step))
            if self.stop.requested:
                self._stop()
                return "stopped"
            epoch, position = divmod(self.step, self.steps_per_epoch)
            if epoch != order_epoch:
                order, order_epoch = epoch_order(spec.seed, epoch, len(self.train_data)), epoch
            batch = [self.train_data[i] for i in order[position * self.batch_size : (position + 1) * self.batch_size]]

            learning_rate = self.scheduler.get_last_lr()[0]
            result = self._train_step(batch)
            self.step += 1
            self.trained_tokens += result.n_tokens
            epoch_end = position == self.steps_per_epoch - 1

            row = {
                "step": self.step,
                "epoch": epoch + 1,
                "train_loss": result.loss,
                "train_mean_token_accuracy": result.accuracy,
                "valid_loss": None,
                "valid_mean_token_accuracy": None,
                "full_valid_loss": None,
                "full_valid_mean_token_accuracy": None,
                "learning_rate": learning_rate,
                "trained_tokens": self.trained_tokens,
                "step_seconds": result.seconds,
            }
            if epoch_end and self.valid_data:
                row["full_valid_loss"], row["full_valid_mean_token_accuracy"] = self._evaluate(self.valid_data)
            self.metrics_log.append(row)
            self.last_row = row
            if self.step % spec.metrics_every == 0 or self.step == self.total_steps or epoch_end:
                fields = {k: v for k, v in row.items() if v is not None or not k.endswith(("loss", "accuracy"))}
                self.progress.emit("metrics", total_steps=self.total_steps, **fields)
            if epoch_end:
                self._checkpoint("epoch")
        return "completed"  # a stop asked for during the last step: finishing costs less than pausing

    def _train_step(self, batch: Sequence[TokenizedExample]) -> StepResult:
        """One optimizer step over `batch`, in micro-batches whose gradients add up to the whole batch's.

        Each micro-batch's summed token loss is divided by the target tokens of the *whole* batch, so
        the accumulated gradient equals that of one big batch, however the batch is split.
        """
        started = time.perf_counter()
        model, pad_id = self.loaded.model, self.loaded.tokenizer.pad_token_id
        n_targets = sum(item.n_targets for item in batch)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        n_tokens = 0
        for micro in micro_batches(batch, self.spec.micro_batch_size):
            tensors = {k: v.to(self.device) for k, v in collate(micro, pad_id).items()}
            # use_cache=False: the KV cache only costs memory in training.
            logits = model(
                input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"], use_cache=False
            ).logits
            micro_loss, micro_correct = token_losses(logits, tensors["labels"])
            (micro_loss / n_targets).backward()
            loss_sum += micro_loss.detach()
            correct += micro_correct
            n_tokens += sum(len(item.input_ids) for item in micro)
        loss = loss_sum.item() / n_targets  # host-device sync point
        if not math.isfinite(loss):
            raise TrainingFailure(
                "training_diverged",
                f"the training loss became {loss} at step {self.step + 1}; try a lower learning_rate_multiplier",
            )
        if self.spec.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.optimizer.param_groups[0]["params"], self.spec.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(loss, correct.item() / n_targets, n_tokens, time.perf_counter() - started)

    @torch.no_grad()
    def _evaluate(self, items: Sequence[TokenizedExample]) -> tuple[float, float]:
        """Loss and token accuracy over `items` in eval mode: no dropout, so no random numbers drawn."""
        model, pad_id = self.loaded.model, self.loaded.tokenizer.pad_token_id
        model.eval()
        loss_sum, correct, n_targets = 0.0, 0, 0
        for micro in micro_batches(items, self.spec.micro_batch_size):
            tensors = {k: v.to(self.device) for k, v in collate(micro, pad_id).items()}
            logits = model(
                input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"], use_cache=False
            ).logits
            micro_loss, micro_correct = token_losses(logits, tensors["labels"])
            loss_sum += micro_loss.item()
            correct += int(micro_correct.item())
            n_targets += sum(item.n_targets for item in micro)
        model.train()
        return loss_sum / n_targets, correct / n_targets

    def _checkpoint(self, kind: ckpt.CheckpointKind) -> ckpt.Checkpoint:
        """Commit a checkpoint of the current step, say so, and prune the oldest beyond keep_checkpoints."""
        self.metrics_log.sync()  # the checkpoint's steps must be on disk before it is
        epoch, position = divmod(self.step, self.steps_per_epoch)
        state = ckpt.TrainingProgress(
            self.step, epoch, position, self.trained_tokens, self.num_threads, self.fingerprint
        )
        metrics = {"step": self.step, **{k: (self.last_row or {}).get(k) for k in CHECKPOINT_METRICS}}
        saved = ckpt.write_checkpoint(
            self.output_dir,
            progress=state,
            epoch=(self.step - 1) // self.steps_per_epoch + 1,
            kind=kind,
            metrics=metrics,
            trainer_state={
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": ckpt.capture_rng(),
            },
            save_weights=lambda dest: save_weights(self.loaded, dest),
            weights_dir="adapter" if self.loaded.is_lora else "model",
        )
        self.last_checkpoint = saved
        self.progress.emit(
            "checkpoint",
            step=self.step,
            epoch=(self.step - 1) // self.steps_per_epoch + 1,
            path=str(saved.path),
            kind=kind,
            metrics=metrics,
        )
        for removed in ckpt.prune(self.output_dir, self.spec.keep_checkpoints):
            self.progress.emit("checkpoint_removed", step=removed.step, path=str(removed.path))
        return saved

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
        tmp = temp_sibling(final)
        try:
            save_weights(self.loaded, tmp)
            commit_dir(tmp, final)
        except BaseException:
            remove_tree(tmp)
            raise
        self.metrics_log.sync()
        results = self.output_dir / RESULTS_FILE
        write_results_csv(self.output_dir / METRICS_FILE, results)
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


def _parse_debug_signals(text: str) -> dict[int, int]:
    plan = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        step, name = item.split(":")
        plan[int(step)] = int(signal.Signals[name.strip().upper()])
    return plan


def run_recipe(spec: TrainJobSpec, progress: Progress, stop: StopRequest) -> Literal["completed", "stopped"]:
    """setup → train → save → cleanup."""
    recipe = SupervisedRecipe(spec, progress, stop)
    try:
        if stop.requested:  # asked to stop before anything was loaded: nothing to save
            newest = next(
                (c for c in reversed(ckpt.list_checkpoints(recipe.output_dir)) if ckpt.verify(c) is None), None
            )
            progress.emit("stopped", step=newest.step if newest else 0, checkpoint=str(newest.path) if newest else None)
            return "stopped"
        recipe.setup()
        outcome = recipe.train()
        if outcome == "completed":
            recipe.save()
        return outcome
    finally:
        recipe.cleanup()


__all__ = ["StopRequest", "SupervisedRecipe", "TrainingFailure", "run_recipe"]
