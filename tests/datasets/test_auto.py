from __future__ import annotations

import pytest

from openft.datasets import auto


@pytest.mark.parametrize(
    ("n_examples", "epochs"), [(1, 25), (10, 10), (20, 5), (34, 3), (100, 3), (8333, 3), (10_000, 2), (50_000, 1)]
)
def test_epochs_follow_the_cookbook(n_examples: int, epochs: int) -> None:
    assert auto.auto_n_epochs(n_examples) == epochs


def test_batch_size_is_about_point_two_percent_between_1_and_256() -> None:
    assert auto.auto_batch_size(10) == 1
    assert auto.auto_batch_size(5_000) == 10
    assert auto.auto_batch_size(1_000_000) == 256


def test_multiplier_grows_with_batch_and_explicit_values_win() -> None:
    small = auto.resolve(40)
    assert (small.n_epochs, small.batch_size, small.learning_rate_multiplier) == (3, 1, 1.0)
    assert auto.auto_learning_rate_multiplier(32) == 2.0
    assert auto.auto_learning_rate_multiplier(256) == 4.0
    explicit = auto.resolve(40, n_epochs=2, batch_size=4, learning_rate_multiplier=0.5)
    assert (explicit.n_epochs, explicit.batch_size, explicit.learning_rate_multiplier) == (2, 4, 0.5)
    assert explicit.steps(41) == 2 * 11
