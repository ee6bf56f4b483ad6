"""Two test "machines" on one: network namespaces joined by a veth pair, made and removed by the test itself.

Needs root and iproute2 (`ip netns`); `available()` says whether this machine allows it. Nothing in the
namespaces can reach beyond them: they hold only their loopback and their end of the pair.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass


def available() -> str | None:
    """None when namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    probe = f"oftprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@dataclass
class Host:
    namespace: str
    address: str

    def command(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *argv]


class TwoHosts:
    """`a` and `b` on 10.231.N.0/24 (N from the pid: test processes running at once do not share names)."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}"
        subnet = f"10.231.{os.getpid() % 250}"
        self.a = Host(f"oft{tag}a", f"{subnet}.1")
        self.b = Host(f"oft{tag}b", f"{subnet}.2")
        self._veth = (f"vo{tag}a", f"vo{tag}b")

    def __enter__(self) -> TwoHosts:
        a, b = self.a, self.b
        va, vb = self._veth
        for step in (
            ["ip", "netns", "add", a.namespace],
            ["ip", "netns", "add", b.namespace],
            ["ip", "link", "add", va, "type", "veth", "peer", "name", vb],
            ["ip", "link", "set", va, "netns", a.namespace],
            ["ip", "link", "set", vb, "netns", b.namespace],
            ["ip", "-n", a.namespace, "addr", "add", f"{a.address}/24", "dev", va],
            ["ip", "-n", b.namespace, "addr", "add", f"{b.address}/24", "dev", vb],
            ["ip", "-n", a.namespace, "link", "set", "lo", "up"],
            ["ip", "-n", b.namespace, "link", "set", "lo", "up"],
            ["ip", "-n", a.namespace, "link", "set", va, "up"],
            ["ip", "-n", b.namespace, "link", "set", vb, "up"],
        ):
            subprocess.run(step, check=True, capture_output=True)
        return self

    def __exit__(self, *exc: object) -> None:
        for host in (self.a, self.b):
            pids = subprocess.run(["ip", "netns", "pids", host.namespace], capture_output=True, text=True).stdout
            for pid in pids.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", host.namespace], capture_output=True)
