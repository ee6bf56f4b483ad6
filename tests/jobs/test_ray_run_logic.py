"""The Ray executor's decisions, without a cluster: how a run ended (from every group's lines and exits), when a
rank is killed for its peers, and jobs the cluster could never hold. Real runs: tests/e2e/test_ray_executor.py."""

from __future__ import annotations

import json
from typing import Any

import pytest

from openft.jobs.executors import ray_channel
from openft.jobs.executors.ray_channel import RunChannel
from openft.jobs.executors.ray_run import _beyond_cluster, _Ending
from openft.trainer_contract import progress_line


def _line(kind: Any, **fields: Any) -> str:
    return progress_line(kind, **fields).rstrip("\n")


def test_rank_0_messages_pass_on_from_every_group_and_others_do_not() -> None:
    ending = _Ending()
    assert ending.line(0, 0, _line("metrics", step=1)) == {"type": "metrics", "step": 1}
    assert ending.line(0, 1, _line("metrics", step=1)) is None  # a peer's repeat
    assert ending.line(0, 0, "stray text") is None
    assert ending.line(1, 0, _line("started", total_steps=4, start_step=2))["type"] == "started"
    assert ending.line(1, 0, _line("completed", step=4)) is None  # an ending is held until all ranks are gone
    assert ending.say({(1, 0): 0, (1, 1): 0}, None, killed=False) == {"type": "completed", "step": 4}


def test_a_restarted_group_decides_the_ending_not_the_one_that_broke() -> None:
    ending = _Ending()
    ending.line(0, 0, _line("failed", code="training_error", message="gloo: connection reset", param=None))
    ending.line(1, 0, _line("completed", step=8))
    exits = {(0, 0): 1, (0, 1): -9, (1, 0): 0, (1, 1): 0}
    assert ending.say(exits, None, killed=False)["type"] == "completed"


def test_a_rank_that_died_without_a_word_is_the_cause_before_the_failures_it_caused() -> None:
    ending = _Ending()
    ending.line(0, 1, _line("failed", code="training_error", message="peer gone", param=None, rank=1))
    said = ending.say({(0, 0): -9, (0, 1): 1}, None, killed=False)
    assert said["code"] == "training_process_died" and "training process 0 was killed by signal 9" in said["message"]


def test_the_first_failure_of_the_last_group_when_everyone_said_why() -> None:
    ending = _Ending()
    ending.line(0, 1, _line("failed", code="out_of_memory", message="rank 1 OOM", param=None, rank=1))
    ending.line(0, 0, _line("failed", code="training_error", message="lost rank 1", param=None))
    said = ending.say({(0, 0): 1, (0, 1): 1}, None, killed=False)
    assert said["code"] == "out_of_memory" and "rank" not in said


def test_ray_giving_up_fails_the_attempt_with_its_reason() -> None:
    said = _Ending().say({(3, 0): -9}, RuntimeError("worker group failed\ndetails"), killed=False)
    assert said["code"] == "training_process_died" and "worker group failed" in said["message"]


def test_a_peer_is_killed_only_after_the_grace_once_a_rank_failed_or_rank_0_ended(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr(ray_channel.time, "monotonic", lambda: now[0])
    channel = RunChannel()
    assert [channel.enter(0), channel.enter(1), channel.enter(1)] == [0, 0, 1]
    channel.exited(0, 0, 3)  # rank 0 stopped: its peer should follow at the same step
    assert channel.control(0, 1) == (None, False)
    now[0] += ray_channel.FAIL_GRACE_SECONDS + 1
    assert channel.control(0, 1) == (None, True)
    assert channel.control(1, 1) == (None, False)  # another group is not concerned
    channel.stop(10)
    channel.stop(15)  # the first stop stands
    assert channel.control(1, 0) == (10, False)
    channel.kill()
    assert channel.control(1, 0) == (10, True)
    lines, exits = channel.take()
    assert lines == [] and exits == {(0, 0): 3}


def test_jobs_larger_than_the_cluster_fail_with_compute_unavailable() -> None:
    assert _beyond_cluster(2, {"CPU": 1}, {"CPU": 2.0}) is None
    cpu = _beyond_cluster(3, {"CPU": 1}, {"CPU": 2.0})
    assert cpu is not None and cpu["code"] == "compute_unavailable" and cpu["param"] == "compute"
    gpu = _beyond_cluster(2, {"CPU": 1, "GPU": 1}, {"CPU": 8.0})
    assert gpu is not None and "0 GPU in all" in gpu["message"] and "gpus_per_worker 0" in gpu["message"]
    json.dumps(gpu)
