from __future__ import annotations

import pytest

from openft.domain.job_states import (
    TERMINAL,
    TRANSITIONS,
    IllegalTransition,
    JobStatus,
    UserAction,
    action_sources,
    after_stop,
    check_transition,
    holds_claim,
    is_legal,
    legal_sources,
    path_to,
    sources_of,
)


def test_terminal_states_have_no_way_out() -> None:
    for status in TERMINAL:
        assert not TRANSITIONS[status]
        for action in UserAction:
            assert status not in action_sources(action)


def test_pause_and_resume_paths() -> None:
    assert action_sources(UserAction.PAUSE) == {JobStatus.RUNNING}
    assert action_sources(UserAction.RESUME) == {JobStatus.PAUSED}
    assert is_legal(JobStatus.RUNNING, JobStatus.PAUSING)
    assert is_legal(JobStatus.PAUSING, JobStatus.PAUSED)
    assert not is_legal(JobStatus.RUNNING, JobStatus.PAUSED)  # paused only after the checkpoint
    assert is_legal(JobStatus.PAUSED, JobStatus.QUEUED)
    assert not is_legal(JobStatus.PAUSED, JobStatus.RUNNING)  # resume goes through the queue


def test_cancel_is_allowed_from_every_live_state_including_paused() -> None:
    assert action_sources(UserAction.CANCEL) == set(JobStatus) - TERMINAL
    assert JobStatus.PAUSED in sources_of(JobStatus.CANCELLED)
    assert JobStatus.PAUSING in sources_of(JobStatus.CANCELLED)


def test_every_status_has_a_row() -> None:
    assert set(TRANSITIONS) == set(JobStatus)


def test_check_transition_refuses_what_the_table_lacks() -> None:
    check_transition(JobStatus.RUNNING, JobStatus.PAUSING)
    with pytest.raises(IllegalTransition):
        check_transition(JobStatus.PAUSED, JobStatus.RUNNING)
    with pytest.raises(IllegalTransition):
        legal_sources(JobStatus.SUCCEEDED, [JobStatus.QUEUED])  # a caller asking for an illegal source is a bug
    assert legal_sources(JobStatus.PAUSED) == {JobStatus.PAUSING}


@pytest.mark.parametrize(
    ("status", "has_checkpoint", "disk_full", "target"),
    [
        (JobStatus.PAUSING, True, False, JobStatus.PAUSED),  # the owner asked, and the checkpoint is there
        (JobStatus.PAUSING, False, False, JobStatus.QUEUED),  # nothing to resume from: run it again
        (JobStatus.RUNNING, True, False, JobStatus.QUEUED),  # shutdown, lost database, dead worker
        (JobStatus.RUNNING, False, False, JobStatus.QUEUED),
        (JobStatus.RUNNING, True, True, JobStatus.PAUSED),  # queued again it would fill the disk again
        (JobStatus.PAUSING, True, True, JobStatus.PAUSED),
    ],
)
def test_where_a_stopped_job_goes(status: JobStatus, has_checkpoint: bool, disk_full: bool, target: JobStatus) -> None:
    assert after_stop(status, has_checkpoint=has_checkpoint, disk_full=disk_full) is target
    assert is_legal(status, target) or path_to(status, target) == (JobStatus.PAUSING, JobStatus.PAUSED)


def test_paths_go_through_pausing_and_nowhere_illegal() -> None:
    assert path_to(JobStatus.RUNNING, JobStatus.PAUSED) == (JobStatus.PAUSING, JobStatus.PAUSED)
    assert path_to(JobStatus.PAUSING, JobStatus.PAUSED) == (JobStatus.PAUSED,)
    with pytest.raises(IllegalTransition):
        path_to(JobStatus.QUEUED, JobStatus.PAUSED)


def test_only_active_and_validating_statuses_hold_a_claim() -> None:
    assert {s for s in JobStatus if holds_claim(s)} == {
        JobStatus.VALIDATING_FILES,
        JobStatus.RUNNING,
        JobStatus.PAUSING,
    }
