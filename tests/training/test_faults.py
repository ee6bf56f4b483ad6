"""Fault injection: the environment's plan becomes the recipe's hooks, each signal sent once at its moment."""

from __future__ import annotations

import signal

import pytest

from openft.training.faults import DEBUG_SIGNALS_ENV, SignalPlan, hooks_from_environment


def test_no_plan_means_no_hooks() -> None:
    assert hooks_from_environment({}) is None
    assert hooks_from_environment({DEBUG_SIGNALS_ENV: " "}) is None


def test_a_planned_signal_fires_once_at_its_moment(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr("os.kill", lambda pid, signum: sent.append((pid, signum)))
    monkeypatch.setattr("os.getpid", lambda: 100)
    monkeypatch.setattr("os.getppid", lambda: 50)
    hooks = hooks_from_environment({DEBUG_SIGNALS_ENV: "2:sigusr1, checkpoint@4:SIGKILL:parent"})
    assert isinstance(hooks, SignalPlan)

    hooks.at_step_boundary(1)
    hooks.checkpoint_weights_saved(2)  # step 2's moment is the boundary, not its checkpoint
    assert sent == []
    hooks.at_step_boundary(2)
    hooks.at_step_boundary(2)
    assert sent == [(100, signal.SIGUSR1)]
    hooks.at_step_boundary(4)
    hooks.checkpoint_weights_saved(4)
    assert sent == [(100, signal.SIGUSR1), (50, signal.SIGKILL)]


def test_an_unknown_signal_is_refused() -> None:
    with pytest.raises(KeyError):
        SignalPlan.parse("3:SIGNOPE")
