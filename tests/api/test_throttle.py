"""FailedKeyThrottle: a budget of wrong keys per client address that refills over its window."""

from __future__ import annotations

from openft.services.throttle import FailedKeyThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_budget_runs_out_then_refills_evenly() -> None:
    clock = Clock()
    throttle = FailedKeyThrottle(3, 60, clock=clock)
    for _ in range(3):
        assert throttle.retry_after("10.0.0.1") is None
        throttle.record_failure("10.0.0.1")
    wait = throttle.retry_after("10.0.0.1")
    assert wait is not None and 19 < wait <= 20  # one failure back every 60/3 s
    assert throttle.retry_after("10.0.0.2") is None  # per address
    clock.now += 20
    assert throttle.retry_after("10.0.0.1") is None
    throttle.record_failure("10.0.0.1")
    assert throttle.retry_after("10.0.0.1") is not None


def test_a_flood_does_not_push_the_wait_further() -> None:
    clock = Clock()
    throttle = FailedKeyThrottle(2, 10, clock=clock)
    for _ in range(1000):
        throttle.record_failure("a")
    wait = throttle.retry_after("a")
    assert wait is not None and wait <= 5


def test_zero_turns_it_off_and_the_table_is_bounded() -> None:
    off = FailedKeyThrottle(0, 60)
    for _ in range(100):
        off.record_failure("a")
    assert off.retry_after("a") is None
    clock = Clock()
    bounded = FailedKeyThrottle(1, 60, clock=clock, max_clients=2)
    for address in ("a", "b", "c"):
        bounded.record_failure(address)
    assert bounded.retry_after("a") is None  # forgotten: the least recently failing goes first
    assert bounded.retry_after("b") is not None and bounded.retry_after("c") is not None
