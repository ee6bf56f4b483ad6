"""Fault injection: make a trainer signal itself (or its worker) at a chosen moment, to test stops and crashes.

Off unless the operator's environment sets `DEBUG_SIGNALS_ENV` (the tests do, and so can an operator
rehearsing a recovery). The entry point turns it into `StepHooks` for the recipe, so the training loop holds
no test code: it only calls its hooks at a step boundary and in the middle of a checkpoint write.

    OPENFT_TRAIN_DEBUG_SIGNALS="3:SIGUSR1,5:SIGKILL"

signals the process when it stands at step 3 (after that step, its metrics and any checkpoint; or on
starting there) and at step 5; 0 = before any step. `checkpoint@7:SIGKILL` fires while the checkpoint of
step 7 is being written (weights saved, not committed). A `:parent` suffix (`checkpoint@7:SIGKILL:parent`)
signals the process that started the trainer (the worker) instead: a worker dying at exactly that moment.
Each planned signal fires once.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping

from openft.training.recipe import StepHooks

DEBUG_SIGNALS_ENV = "OPENFT_TRAIN_DEBUG_SIGNALS"


class SignalPlan(StepHooks):
    """Signals to send at named moments: `"3"` (the step boundary at step 3), `"checkpoint@7"`."""

    def __init__(self, plan: dict[str, tuple[signal.Signals, bool]]):
        self._plan = plan
        """moment → (signal, send it to the parent process instead of this one)"""

    @classmethod
    def parse(cls, text: str) -> SignalPlan:
        """ "3:SIGUSR1,checkpoint@5:SIGKILL:parent" → at step 3 SIGUSR1 to self, mid-checkpoint 5 SIGKILL to parent."""
        plan = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            moment, name, *target = item.split(":")
            plan[moment.strip()] = (signal.Signals[name.strip().upper()], target == ["parent"])
        return cls(plan)

    def at_step_boundary(self, step: int) -> None:
        self._fire(str(step))

    def checkpoint_weights_saved(self, step: int) -> None:
        self._fire(f"checkpoint@{step}")

    def _fire(self, moment: str) -> None:
        planned = self._plan.pop(moment, None)
        if planned is not None:
            signum, to_parent = planned
            os.kill(os.getppid() if to_parent else os.getpid(), signum)


def hooks_from_environment(environ: Mapping[str, str] = os.environ) -> StepHooks | None:
    """The fault injection the environment asks for, or None (the normal case)."""
    text = environ.get(DEBUG_SIGNALS_ENV, "")
    return SignalPlan.parse(text) if text.strip() else None
