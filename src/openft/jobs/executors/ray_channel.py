"""The Ray actor between one attempt's driver (the openft worker) and its ranks (Ray Train workers).

Ray workers cannot write to the worker's pipes, so everything the local executor passes through a process's
stdin and stdout goes through this actor instead: the ranks' output lines (in the order each rank wrote them:
Ray runs one caller's calls to an actor in order), the stop byte and a kill, and how each rank's process ended.

Ray Train restarts the whole worker group after a worker or node is lost (ray_run.py); each start of a rank is a
new *generation*, counted per rank (every rank of a group starts once per group), so the ranks of one group meet
in a rendezvous of their own and the driver can tell old lines from new ones.
"""

from __future__ import annotations

import time

FAIL_GRACE_SECONDS = 30.0
"""How long a rank may outlive a peer of its group that failed (or rank 0 that ended), as in the launcher."""
OK_EXITS = (0, 3)
"""ExitCode.COMPLETED and ExitCode.STOPPED (this module is loaded in Ray's processes: no openft imports)."""


class RunChannel:
    def __init__(self) -> None:
        self._lines: list[tuple[int, int, str]] = []
        self._entries: dict[int, int] = {}
        self._stop: int | None = None
        self._killed = False
        self._exits: dict[tuple[int, int], tuple[int, float]] = {}

    # the ranks' side ------------------------------------------------------------------------------
    def enter(self, rank: int) -> int:
        """A rank's process is about to start: its generation (0 for the first group, 1 after a restart, …)."""
        generation = self._entries.get(rank, 0)
        self._entries[rank] = generation + 1
        return generation

    def put(self, generation: int, rank: int, lines: list[str]) -> None:
        self._lines.extend((generation, rank, line) for line in lines)

    def exited(self, generation: int, rank: int, code: int) -> None:
        self._exits[(generation, rank)] = (code, time.monotonic())

    def control(self, generation: int, rank: int) -> tuple[int | None, bool]:
        """(the stop byte to pass on, or None; whether to kill the rank's process now)."""
        kill = self._killed
        now = time.monotonic()
        for (group, other), (code, when) in self._exits.items():
            ended_badly = code not in OK_EXITS or other == 0
            if group == generation and other != rank and ended_badly and now - when > FAIL_GRACE_SECONDS:
                kill = True
        return self._stop, kill

    # the driver's side ----------------------------------------------------------------------------
    def take(self) -> tuple[list[tuple[int, int, str]], dict[tuple[int, int], int]]:
        """The lines written since the last call, and every rank's exit code so far."""
        lines, self._lines = self._lines, []
        return lines, {key: code for key, (code, _) in self._exits.items()}

    def entered(self) -> bool:
        """Whether any rank has started (before that, a stop or a kill has nothing to reach but Ray itself)."""
        return bool(self._entries)

    def stop(self, byte: int) -> None:
        if self._stop is None:
            self._stop = byte

    def kill(self) -> None:
        self._killed = True
