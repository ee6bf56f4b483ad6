"""`python` graders: the user's `grade(sample, item) -> float`, run in a sandboxed child process.

What the sandbox gives, layer by layer (each run reports which isolation it got in `GradeResult.isolation`):

1. **A child process per sample**, started with `python -I -B` (no PYTHON* variables, no user site, no
   bytecode written) and an environment holding only PATH, LANG and single-thread settings: none of the
   server's variables (database URL, API key, cloud credentials) reach it. Its own process group: on any
   overrun the whole group is killed with SIGKILL.
2. **No network and no writable file, enforced by the kernel**: before the user's code is even read, the
   child enters new network and mount namespaces (`unshare`; with a user namespace too unless it is a root
   server's child that can become nobody, 3.). The network namespace holds only a loopback interface that is
   down: no connection can be made, not even to the server's own loopback ports. In the mount namespace,
   made private first so nothing reaches the server's, every mount is made read-only recursively
   (`mount_setattr`, Linux 5.12+): no file anywhere can be created, changed, truncated or deleted, whoever
   owns it. Where the kernel refuses namespaces (a container without CAP_SYS_ADMIN and with unprivileged
   user namespaces off), the run still happens, `isolation` says "no namespace", and only RLIMIT_FSIZE (4.)
   and the audit hook (5.) stand against writes and the hook alone against the network.
3. **No identity, where the Python allows it**: a root server's child becomes `nobody` (uid/gid 65534, no
   groups), so files readable only by their owner (openft writes its API key file 0600) cannot be opened —
   but only when `nobody` can read the Python installation itself. A Python under a private home (e.g.
   /root/.pyenv) cannot be run as `nobody`; the child then keeps the server's uid on files inside its own
   user namespace (without the server's capabilities), and reading the server's files is refused by the
   audit hook (5.) only. A non-root server's child is likewise the server's uid on files. `isolation` says
   which case ran.
4. **Resource limits (setrlimit)**: CPU seconds (RLIMIT_CPU: SIGXCPU, then SIGKILL a second later),
   address space (RLIMIT_AS: a memory bomb gets MemoryError), file size 0 (RLIMIT_FSIZE: no file can grow;
   Python ignores SIGXFSZ, so the write fails with EFBIG), no core dumps, 64 open files. The parent adds a
   wall-clock timeout and a cap on the bytes the child may print (stdout and stderr together); either
   overrun kills the process group.
5. **An audit hook (PEP 578)** installed before the user's source is compiled, which cannot be removed:
   it refuses opening any file for writing, reading files outside the Python installation (sys.prefix,
   sys.path), the empty read-only working directory, /usr/share/zoneinfo, /etc/localtime, /dev/null and
   /dev/urandom, listing other directories, creating sockets, starting processes (subprocess, os.system,
   exec*, spawn*, fork), sending signals, deleting/renaming/chmod-ing files, every ctypes call, mmap, and the
   gc functions that hand out arbitrary objects.
6. **A source-size cap** (256 KiB, as OpenAI's) and a syntax check at validation: a source that does not
   compile or defines no top-level `grade` is an invalid grader (400), never run.

What it does not give: the audit hook is a Python-level guard, not a security boundary — a user who finds a
way to corrupt the interpreter's memory, or to reach the hook's objects through introspection it does not
refuse, can get past it. Against that the kernel layers (2.-4.) still hold where `isolation` reports them:
no network, read-only mounts, bounded CPU and memory, and (as nobody) no access to owner-only files. There
is no seccomp filter, no PID namespace (the child sees the host's /proc) and no chroot: past the hook, the
child could read any file its uid may read. For hostile multi-tenant use, run openft's server (or its
graders) inside a container or VM of its own as well.

Python libraries: whatever is installed in the server's environment may be imported (numpy, for one).
OpenAI's image adds more (pandas, scipy, sympy, …); openft does not install them for graders.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import json
import math
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openft.graders.base import GraderInvalid, SampleError, require_str

MAX_SOURCE_BYTES = 256 * 1024
_CHILD = Path(__file__).with_name("_sandbox_child.py")


@dataclass(frozen=True)
class PythonLimits:
    """One grading run's limits. OpenAI's documented ones are 2 minutes and 2 GB; these defaults match."""

    wall_seconds: float = 120.0
    cpu_seconds: int = 120
    memory_bytes: int = 2 * 1024**3
    output_bytes: int = 1024 * 1024


def validate(grader: dict[str, Any], param: str) -> None:
    source = require_str(grader, "source", param)
    if len(source.encode()) > MAX_SOURCE_BYTES:
        raise GraderInvalid(f"`source` is larger than {MAX_SOURCE_BYTES // 1024} KiB", param=f"{param}.source")
    try:
        tree = ast.parse(source, "<grader>")  # parsing runs nothing
    except SyntaxError as exc:
        raise GraderInvalid(
            f"`source` does not compile: {exc.msg} (line {exc.lineno})", param=f"{param}.source"
        ) from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise GraderInvalid(f"`source` does not compile: {exc}", param=f"{param}.source") from None
    if not any(isinstance(node, ast.FunctionDef) and node.name == "grade" for node in tree.body):
        raise GraderInvalid(
            "`source` must define a top-level function `grade(sample, item) -> float`", param=f"{param}.source"
        )
    tag = grader.get("image_tag")
    if tag is not None and not isinstance(tag, str):
        raise GraderInvalid("`image_tag` must be a string", param=f"{param}.image_tag")


@dataclass
class Outcome:
    reward: float
    isolation: str | None  # how the child was isolated, as it reported it (None when it never reported)
    error: SampleError | None = None  # why this sample could not be graded (the reward is then 0)


def grade(
    grader: dict[str, Any], sample: dict[str, Any], item: dict[str, Any], limits: PythonLimits | None = None
) -> Outcome:
    """Run the grader's `grade` on one sample; every failure is a SampleError with OpenAI's flag for it."""
    try:
        return _grade(grader, sample, item, limits or PythonLimits())
    except SampleError as exc:
        return Outcome(reward=0.0, isolation=None, error=exc)


def _grade(grader: dict[str, Any], sample: dict[str, Any], item: dict[str, Any], limits: PythonLimits) -> Outcome:
    job = json.dumps(
        {
            "source": grader["source"],
            "sample": sample,
            "item": item,
            "cpu_seconds": limits.cpu_seconds,
            "memory_bytes": limits.memory_bytes,
            "drop_to_nobody": nobody_can_run_python(),
        }
    ).encode()
    with tempfile.TemporaryDirectory(prefix="openft-grader-") as workdir:
        os.chmod(workdir, 0o555)  # empty and read-only: the user's code has nowhere to write
        try:
            stdout, stderr, returncode, overrun = _run(job, workdir, limits)
        finally:
            os.chmod(workdir, 0o700)  # let TemporaryDirectory remove it
    if overrun == "timeout":
        raise SampleError("unresponsive_reward_error", f"the python grader ran longer than {limits.wall_seconds:g} s")
    if overrun == "output":
        raise SampleError(
            "truncated_observation_error", f"the python grader printed more than {limits.output_bytes} bytes"
        )
    if returncode != 0 or not stdout:
        raise _killed(returncode, stderr, limits)
    try:
        result = json.loads(stdout)
    except ValueError:
        raise SampleError(
            "python_grader_server_error",
            "the python grader's sandbox answered something unreadable",
            details={"python_grader_server_error_type": "bad_output"},
        ) from None
    isolation = result.get("isolation")
    if "error" in result:
        message = str(result["error"])
        error = SampleError(
            "python_grader_runtime_error",
            f"the python grader failed: {message.strip().splitlines()[-1] if message.strip() else message}",
            details={"python_grader_runtime_error_details": message},
        )
        return Outcome(reward=0.0, isolation=isolation, error=error)
    reward = float(result["reward"])
    if not math.isfinite(reward):
        error = SampleError("python_grader_runtime_error", f"grade() returned {reward}")
        return Outcome(reward=0.0, isolation=isolation, error=error)
    return Outcome(reward=reward, isolation=isolation)


def _killed(returncode: int, stderr: bytes, limits: PythonLimits) -> SampleError:
    tail = stderr[-2000:].decode(errors="replace")
    if returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        return SampleError(
            "unresponsive_reward_error",
            f"the python grader used more than {limits.cpu_seconds} s of CPU and was killed",
        )
    if returncode == -signal.SIGXFSZ:
        return SampleError(
            "python_grader_runtime_error",
            "the python grader tried to write a file and was killed",
            details={"python_grader_runtime_error_details": "SIGXFSZ: writing files is not allowed"},
        )
    if returncode < 0:
        what = signal.Signals(-returncode).name if -returncode in signal.Signals._value2member_map_ else returncode
        return SampleError(
            "python_grader_runtime_error",
            f"the python grader was killed by {what}",
            details={"python_grader_runtime_error_details": tail or None},
        )
    return SampleError(
        "python_grader_server_error",
        f"the python grader's sandbox exited with status {returncode}",
        details={
            "python_grader_server_error_type": "sandbox_exit",
            "python_grader_runtime_error_details": tail or None,
        },
    )


@functools.cache
def nobody_can_run_python() -> bool:
    """Whether uid nobody could read this Python (its standard library, site-packages, this package): not
    when it lives under a private home such as /root/.pyenv. Then a root server's child keeps root's uid on
    files (inside its own user namespace, without root's capabilities), and only the audit hook stands
    between it and files root can read."""
    import sysconfig

    paths = [sys.executable, sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"], str(_CHILD)]
    for path in paths:
        real = Path(os.path.realpath(path))
        for directory in real.parents:
            if not os.stat(directory).st_mode & 0o001:
                return False
        if not os.stat(real).st_mode & 0o004:
            return False
    return True


def _run(job: bytes, workdir: str, limits: PythonLimits) -> tuple[bytes, bytes, int, str | None]:
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-B", str(_CHILD), workdir],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=workdir,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as exc:  # no processes left, no memory: the server's trouble, not the grader's
        raise SampleError(
            "python_grader_server_error",
            f"the python grader's sandbox could not start: {exc}",
            details={"python_grader_server_error_type": "sandbox_start"},
        ) from exc
    deadline = time.monotonic() + limits.wall_seconds
    outputs: dict[int, bytearray] = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}  # type: ignore[union-attr]
    overrun: str | None = None
    try:
        assert proc.stdin is not None
        try:
            proc.stdin.write(job)  # the child reads all of it before anything else
            proc.stdin.close()
        except BrokenPipeError:
            pass
        with selectors.DefaultSelector() as sel:
            for fd in outputs:
                sel.register(fd, selectors.EVENT_READ)
            while sel.get_map() and overrun is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    overrun = "timeout"
                    break
                for key, _ in sel.select(timeout=min(left, 1.0)):
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        sel.unregister(key.fd)
                        continue
                    outputs[key.fd] += chunk
                    if sum(len(b) for b in outputs.values()) > limits.output_bytes + 65536:
                        overrun = "output"
        if overrun is None:
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                overrun = "timeout"
    finally:
        _kill_group(proc)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    out, err = (bytes(b) for b in outputs.values())
    if overrun is None and len(out) + len(err) > limits.output_bytes:
        overrun = "output"
    return out, err, proc.returncode, overrun


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
