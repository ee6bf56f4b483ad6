"""The python grader runs the user's code in a child that cannot reach the network, write files, read the
server's files, start processes, or run away with CPU, memory or output — each shown by trying it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from openft.graders import GraderInvalid, PythonLimits, grade, validate
from openft.graders import python_grader as pg

FAST = PythonLimits(wall_seconds=10, cpu_seconds=1, memory_bytes=512 * 1024**2, output_bytes=64 * 1024)


def run(source: str, sample: dict[str, Any] | None = None, item: dict[str, Any] | None = None,
        limits: PythonLimits = FAST) -> Any:  # fmt: skip
    grader = {"type": "python", "name": "p", "source": textwrap.dedent(source)}
    return grade(grader, sample or {"output_text": ""}, item or {}, python_limits=limits)


def test_openapi_python_example() -> None:
    source = '''
def grade(sample: dict, item: dict) -> float:
    """
    Returns 1.0 if `output_text` equals `label`, otherwise 0.0.
    """
    output = sample.get("output_text")
    label = item.get("label")
    return 1.0 if output == label else 0.0
'''
    grader = {"type": "python", "name": "Example python grader", "image_tag": "2025-05-08", "source": source}
    validate(grader)
    assert grade(grader, {"output_text": "yes"}, {"label": "yes"}).reward == 1.0
    result = grade(grader, {"output_text": "no"}, {"label": "yes"})
    assert result.reward == 0.0 and not result.failed
    assert result.isolation  # e.g. "user+network namespace, the server's uid on files"


def test_the_grader_sees_output_json_and_may_import_installed_libraries() -> None:
    result = run(
        """
        import json, math, numpy as np
        def grade(sample, item):
            return float(np.mean(sample["output_json"]["scores"])) * item["weight"]
        """,
        sample={"output_text": '{"scores": [1, 0]}', "output_json": {"scores": [1, 0]}},
        item={"weight": 0.5},
    )
    assert (result.reward, result.failed) == (0.25, False)


@pytest.mark.parametrize(
    ("source", "why"),
    [("def grade(sample, item):\n    return 1.0 +\n", "does not compile"),
     ("def score(s, i):\n    return 1\n", "`grade"), ("import os\n", "`grade"),
     ("x = 1\n" * 50_000, "larger than 256 KiB")],
)  # fmt: skip
def test_a_source_that_cannot_run_is_an_invalid_grader(source: str, why: str) -> None:
    with pytest.raises(GraderInvalid, match=why) as caught:
        validate({"type": "python", "name": "p", "source": source})
    assert caught.value.param == "grader.source"


def test_exceptions_and_non_numbers_are_runtime_errors_for_the_sample() -> None:
    failed = run("def grade(sample, item):\n    return item['missing']\n")
    assert failed.reward == 0.0 and failed.errors["python_grader_runtime_error"] is True
    assert "KeyError: 'missing'" in (failed.error_details["python_grader_runtime_error_details"] or "")
    wrong = run("def grade(sample, item):\n    return 'high'\n")
    assert wrong.errors["python_grader_runtime_error"] is True and "not str" in (wrong.error_message or "")
    exits = run("import sys\ndef grade(sample, item):\n    sys.exit(3)\n")
    assert exits.errors["python_grader_runtime_error"] is True and "SystemExit" in (exits.error_message or "")


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    yield server
    server.close()


def nothing_connected(server: socket.socket) -> bool:
    try:
        server.accept()[0].close()
    except TimeoutError:
        return True
    return False


def test_network_is_refused(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    for attempt in (f"socket.create_connection(('127.0.0.1', {port}), timeout=2)",
                    f"_socket.socket().connect(('127.0.0.1', {port}))",
                    "urllib.request.urlopen('http://127.0.0.1:%d/' % " + str(port) + ", timeout=2)"):  # fmt: skip
        result = run(
            f"import socket, _socket, urllib.request\ndef grade(sample, item):\n    {attempt}\n    return 1.0\n"
        )
        assert result.reward == 0.0 and result.errors["python_grader_runtime_error"] is True, attempt
        assert "does not allow socket" in (result.error_message or ""), result.error_message
    assert nothing_connected(listener)


def test_file_writes_are_refused_anywhere(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o777)  # writable by anyone: only the sandbox stands in the way
    target = tmp_path / "written"
    for attempt in (f"open({str(target)!r}, 'w').write('x')", f"open({str(target)!r}, 'ab')",
                    f"os.open({str(target)!r}, os.O_CREAT | os.O_WRONLY)", "open('here', 'w')",
                    f"pathlib.Path({str(target)!r}).write_text('x')", f"os.mkdir({str(tmp_path / 'd')!r})",
                    f"shutil.copyfile(__file__ if '__file__' in dir() else os.__file__, {str(target)!r})"):  # fmt: skip
        result = run(f"import os, pathlib, shutil\ndef grade(sample, item):\n    {attempt}\n    return 1.0\n")
        assert result.reward == 0.0 and result.errors["python_grader_runtime_error"] is True, attempt
    assert list(tmp_path.iterdir()) == []


def test_the_servers_files_and_environment_stay_out_of_reach(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "api_key"
    secret.write_text("sk-secret")
    monkeypatch.setenv("OPENFT_TEST_SECRET", "sk-secret")
    read = run(f"def grade(sample, item):\n    return float(len(open({str(secret)!r}).read()))\n")
    assert read.reward == 0.0 and "does not allow reading" in (read.error_message or "")
    listing = run(f"import os\ndef grade(sample, item):\n    return float(len(os.listdir({str(tmp_path)!r})))\n")
    assert listing.reward == 0.0 and listing.errors["python_grader_runtime_error"] is True
    env = run("import os\ndef grade(sample, item):\n    return float(len(os.environ))\n")
    assert (env.reward, env.failed) == (0.0, False)


def test_processes_and_ctypes_are_refused(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o777)
    marker = tmp_path / "ran"
    for attempt in (f"os.system('touch {marker}')", f"subprocess.run(['touch', {str(marker)!r}])",
                    "os.fork()", f"os.execv('/usr/bin/touch', ['touch', {str(marker)!r}])",
                    f"ctypes.CDLL(None).system(b'touch {marker}')"):  # fmt: skip
        result = run(f"import os, subprocess, ctypes\ndef grade(sample, item):\n    {attempt}\n    return 1.0\n")
        assert result.reward == 0.0 and result.errors["python_grader_runtime_error"] is True, attempt
    assert not marker.exists()


def test_runaway_cpu_is_killed_within_the_limit() -> None:
    started = time.monotonic()
    limits = PythonLimits(wall_seconds=60, cpu_seconds=1, memory_bytes=FAST.memory_bytes)
    result = run("def grade(sample, item):\n    while True:\n        pass\n", limits=limits)
    elapsed = time.monotonic() - started
    assert result.reward == 0.0 and result.errors["unresponsive_reward_error"] is True
    assert "1 s of CPU" in (result.error_message or "")  # SIGXCPU at 1 s of CPU (SIGKILL at 2 s), not the wall
    assert elapsed < 15  # (about 1.3 s on an idle machine; generous for a loaded one)


def test_a_sleeping_grader_is_killed_at_the_wall_timeout() -> None:
    started = time.monotonic()
    result = run("import time\ndef grade(sample, item):\n    time.sleep(60)\n",
                 limits=PythonLimits(wall_seconds=1, cpu_seconds=5, memory_bytes=FAST.memory_bytes))  # fmt: skip
    assert result.errors["unresponsive_reward_error"] is True and "longer than 1 s" in (result.error_message or "")
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    "bomb", ["x = bytearray(4 * 1024**3)", "x = []\n    while True:\n        x.append(bytearray(16 * 1024**2))"]
)
def test_memory_bombs_hit_the_limit(bomb: str) -> None:
    limits = PythonLimits(wall_seconds=30, cpu_seconds=20, memory_bytes=FAST.memory_bytes)
    result = run(f"def grade(sample, item):\n    {bomb}\n    return 1.0\n", limits=limits)
    assert result.reward == 0.0 and result.errors["python_grader_runtime_error"] is True
    assert "MemoryError" in (result.error_message or "")


def test_output_floods_are_cut_off() -> None:
    result = run("import sys\ndef grade(sample, item):\n    while True:\n        print('x' * 10000)\n")
    assert result.reward == 0.0 and result.errors["truncated_observation_error"] is True


def test_the_kernel_layers_hold_without_the_audit_hook(listener: socket.socket, tmp_path: Path) -> None:
    """The namespaces and rlimits alone (no audit hook): no connection, no file created, changed or deleted
    even in a directory anyone may write, CPU killed."""
    os.chmod(tmp_path, 0o777)
    existing = tmp_path / "existing"
    existing.write_text("keep me")
    existing.chmod(0o666)
    port = listener.getsockname()[1]
    script = textwrap.dedent(f"""
        import errno, json, os, socket, sys
        sys.path.insert(0, {str(Path(pg.__file__).parent)!r})
        import _sandbox_child as child
        isolation = child.isolate(False)
        child.limit(1, 512 * 1024**2)
        report = {{"isolation": isolation}}
        attempts = {{
            "connect": lambda: socket.create_connection(("127.0.0.1", {port}), timeout=2),
            "create": lambda: open({str(tmp_path / "grown")!r}, "w").write("x" * 100),
            "truncate": lambda: open({str(existing)!r}, "r+").truncate(0),
            "delete": lambda: os.remove({str(existing)!r}),
        }}
        for name, attempt in attempts.items():
            try:
                attempt()
                report[name] = "done"
            except OSError as exc:
                report[name] = errno.errorcode.get(exc.errno, str(exc))
        print(json.dumps(report), flush=True)
        while True:
            pass
    """)
    proc = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, timeout=20)
    report = json.loads(proc.stdout)
    if "no namespace" in report["isolation"]:
        pytest.skip(f"this kernel refuses namespaces: {report['isolation']}")
    assert report["connect"] in ("ENETUNREACH", "ECONNREFUSED", "EHOSTUNREACH"), report
    assert nothing_connected(listener)
    if "read-only mounts" in report["isolation"]:
        assert (report["create"], report["truncate"], report["delete"]) == ("EROFS", "EROFS", "EROFS"), report
        assert existing.read_text() == "keep me"
        assert not (tmp_path / "grown").exists()
    else:  # without a mount namespace only RLIMIT_FSIZE holds: nothing can grow (Python ignores SIGXFSZ)
        assert report["create"] == "EFBIG", report
    assert proc.returncode in (-24, -9)  # SIGXCPU, or SIGKILL at the hard limit


def world_readable_python() -> str | None:
    """A Python that uid nobody can run (this venv's may live under a private /root/.pyenv), or None."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        probe = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", candidate, "-I", "-c", "import json"],
            capture_output=True,
        )
        if probe.returncode == 0:
            return candidate
    return None


def test_a_root_servers_child_becomes_nobody(tmp_path: Path) -> None:
    """Where the Python allows it, a root server's child runs as nobody: a 0600 file (like openft's API key
    file) is refused by the kernel itself, audit hook or not."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv")
    python = world_readable_python()
    if python is None:
        pytest.skip("no Python on this machine that uid nobody can run")
    secret = tmp_path / "api_key"
    secret.write_text("sk-secret")
    secret.chmod(0o600)
    os.chmod(tmp_path, 0o755)
    script = textwrap.dedent(f"""
        import json, os, sys
        sys.path.insert(0, {str(Path(pg.__file__).parent)!r})
        import _sandbox_child as child
        report = {{"isolation": child.isolate(True), "uid": os.getuid()}}
        try:
            report["read"] = open({str(secret)!r}).read()
        except PermissionError as exc:
            report["read"] = "EACCES" if exc.errno == 13 else str(exc)
        print(json.dumps(report))
    """)
    report = json.loads(subprocess.run([python, "-I", "-c", script], capture_output=True, text=True).stdout)
    assert report["uid"] == 65534 and "uid nobody" in report["isolation"]
    assert report["read"] == "EACCES"
