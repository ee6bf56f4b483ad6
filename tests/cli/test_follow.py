"""`jobs follow`'s tokens/s from metrics events (no server)."""

from __future__ import annotations

import pytest

from openft.client.follow import EXIT_CODES, Speed


def test_tokens_per_second_from_trained_tokens_and_step_seconds() -> None:
    speed = Speed()
    assert speed.tokens_per_second() is None
    speed.add({"step": 1, "trained_tokens": 100, "step_seconds": 1.0})
    assert speed.tokens_per_second() is None
    speed.add({"step": 2, "trained_tokens": 300, "step_seconds": 2.0})
    speed.add({"step": 4, "trained_tokens": 700, "step_seconds": 1.0})  # every 2nd step: 2 steps of 1 s
    assert speed.tokens_per_second() == pytest.approx(600 / 4)
    speed.add({"step": 2, "trained_tokens": 300, "step_seconds": 1.0})  # trained again after a recovery
    assert speed.tokens_per_second() is None
    speed.add({"step": 3, "train_loss": 1.0})  # events of older servers carry no speed fields
    assert speed.tokens_per_second() is None


def test_exit_codes() -> None:
    assert EXIT_CODES == {"succeeded": 0, "failed": 1, "cancelled": 2}
