from __future__ import annotations

from openft.jobs.states import (
    TERMINAL,
    TRANSITIONS,
    JobStatus,
    UserAction,
    action_sources,
    is_legal,
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
