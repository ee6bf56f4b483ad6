"""The python grader's child process (run by python_grader.py as `python -I -B _sandbox_child.py WORKDIR`).

Standard library only, and nothing from openft: it runs before any isolation is in place, so it must not
import what it does not need. Order matters: isolate (network namespace, unprivileged uid), set the
resource limits, read the job, then install the audit hook, and only then compile and run the user's
source. Everything after the hook runs under it. See python_grader.py for what each layer gives.
"""

import json
import os
import resource
import sys
import traceback
from collections.abc import Callable
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
NOBODY = 65534
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
SYS_MOUNT_SETATTR = 442  # the same number on x86-64 and arm64 (the shared table of new system calls)
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1


def isolate(drop_to_nobody: bool) -> str:
    """New network and mount namespaces (no network at all; every mount read-only) and, where possible, no
    identity. Returns what it got, for GradeResult.isolation."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "unshare"):  # not Linux
        if os.geteuid() == 0 and drop_to_nobody:
            _become_nobody()
            return "no namespace (no unshare on this system), uid nobody"
        return "no namespace (no unshare on this system), the server's uid on files"
    if os.geteuid() == 0 and drop_to_nobody:
        # root makes the namespaces directly, then becomes nobody (the files the server's user owns, its data
        # folder and API key among them, are then out of reach where their mode says so)
        for flags, what in ((CLONE_NEWNET | CLONE_NEWNS, "network+mount"), (CLONE_NEWNET, "network")):
            if libc.unshare(flags) == 0:
                mounts = _read_only_mounts(libc) if flags & CLONE_NEWNS else "writable mounts"
                _become_nobody()
                return f"{what} namespace, {mounts}, uid nobody"
    # a user namespace (no uid mapped in it) with network and mount ones; the uid on files stays the server's
    for flags, what in (
        (CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS, "user+network+mount"),
        (CLONE_NEWUSER | CLONE_NEWNET, "user+network"),
    ):
        if libc.unshare(flags) == 0:
            mounts = _read_only_mounts(libc) if flags & CLONE_NEWNS else "writable mounts"
            return f"{what} namespace, {mounts}, the server's uid on files"
    errno = ctypes.get_errno()
    if os.geteuid() == 0 and drop_to_nobody:
        _become_nobody()
        return f"no namespace (unshare: errno {errno}), uid nobody"
    return f"no namespace (unshare: errno {errno}), the server's uid on files"


def _read_only_mounts(libc: Any) -> str:
    """Every mount of the child's own mount namespace read-only, recursively (mount_setattr, Linux 5.12+):
    no file anywhere can then be created, changed, truncated or deleted, whatever its owner and mode. The
    mounts are made private first, so nothing of this reaches the server's mount namespace."""
    import ctypes
    import platform

    if platform.machine() not in ("x86_64", "aarch64"):
        return "writable mounts (mount_setattr's number unknown here)"
    if libc.mount(None, b"/", None, ctypes.c_ulong(MS_REC | MS_PRIVATE), None) != 0:
        return f"writable mounts (making them private: errno {ctypes.get_errno()})"

    class MountAttr(ctypes.Structure):
        _fields_ = [(name, ctypes.c_uint64) for name in ("attr_set", "attr_clr", "propagation", "userns_fd")]

    attr = MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
    libc.syscall.restype = ctypes.c_long
    done = libc.syscall(
        ctypes.c_long(SYS_MOUNT_SETATTR),
        ctypes.c_int(AT_FDCWD),
        ctypes.c_char_p(b"/"),
        ctypes.c_uint(AT_RECURSIVE),
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
    )
    return "read-only mounts" if done == 0 else f"writable mounts (mount_setattr: errno {ctypes.get_errno()})"


def _become_nobody() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def limit(cpu_seconds: int, memory_bytes: int) -> None:
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))  # no file can grow (Python ignores SIGXFSZ: EFBIG)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_REFUSED_PREFIXES = ("socket.", "subprocess.", "os.exec", "os.spawn", "os.posix_spawn", "ctypes.", "pty.", "winreg.")
_REFUSED = frozenset(
    {
        "os.system", "os.fork", "os.forkpty", "os.kill", "os.killpg", "os.remove", "os.unlink", "os.rename",
        "os.replace", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.link", "os.symlink", "os.truncate",
        "os.utime", "os.chflags", "os.lchflags", "os.mkfifo", "os.mknod", "os.setxattr", "os.removexattr",
        "shutil.rmtree", "shutil.copyfile", "shutil.move", "shutil.chown",
        "gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys._current_frames", "sys.remote_exec",
        "mmap.__new__", "resource.setrlimit",
        "resource.prlimit", "signal.pthread_kill", "fcntl.ioctl", "import_module_by_path", "webbrowser.open",
    }
)  # fmt: skip


def make_hook(readable: tuple[str, ...]) -> Callable[[str, tuple[Any, ...]], None]:
    realpath, fspath, startswith = os.path.realpath, os.fspath, str.startswith
    refused, prefixes, write_flags = _REFUSED, _REFUSED_PREFIXES, _WRITE_FLAGS

    def refuse(what: str) -> None:
        raise PermissionError(f"the python grader sandbox does not allow {what}")

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event == "open":
            path, mode, flags = args
            if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (flags or 0) & write_flags:
                refuse(f"writing files ({event} {path!r})")
            if isinstance(path, int):
                return
            where = realpath(fspath(path) if not isinstance(path, bytes) else path.decode(errors="replace"))
            if not any(where == root or startswith(where, root + "/") for root in readable):
                refuse(f"reading {where!r} (only the Python installation is readable)")
        elif event in ("os.listdir", "os.scandir"):
            path = args[0] if args and args[0] is not None else "."
            if isinstance(path, int):
                refuse("listing a directory by descriptor")
            where = realpath(fspath(path) if not isinstance(path, bytes) else path.decode(errors="replace"))
            if not any(where == root or startswith(where, root + "/") for root in readable):
                refuse(f"listing {where!r}")
        elif event in refused or startswith(event, prefixes):
            refuse(event)

    return hook


def readable_roots(workdir: str) -> tuple[str, ...]:
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, workdir, "/usr/share/zoneinfo"}
    roots.update(p for p in sys.path if p and os.path.isabs(p))
    roots.update(("/dev/null", "/dev/urandom", "/etc/localtime"))
    return tuple(sorted(os.path.realpath(r) for r in roots if r and os.path.realpath(r) != "/"))


def main() -> None:
    workdir = sys.argv[1]
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")  # the result goes here; user prints go to stderr
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    job = json.loads(sys.stdin.read())
    isolation = isolate(bool(job.get("drop_to_nobody")))
    limit(int(job["cpu_seconds"]), int(job["memory_bytes"]))
    os.chdir(workdir)
    # imported now, under no hook: their own dlopen/file reads at import would be refused later
    import ctypes  # noqa: F401
    import decimal  # noqa: F401
    import math  # noqa: F401
    import random  # noqa: F401
    import re  # noqa: F401

    os.environ.clear()
    sys.addaudithook(make_hook(readable_roots(workdir)))
    result: dict = {"isolation": isolation}
    try:
        namespace: dict = {"__name__": "__grader__", "__builtins__": __builtins__}
        exec(compile(job["source"], "<grader>", "exec"), namespace)
        value = namespace["grade"](job["sample"], job["item"])
        if isinstance(value, bool) or not isinstance(value, int | float):
            result["error"] = f"grade() must return a number (int or float), not {type(value).__name__}"
        else:
            result["reward"] = float(value)
    except MemoryError:
        result["error"] = "MemoryError: the grader used more memory than its limit"
    except BaseException:  # SystemExit and KeyboardInterrupt too: the user's code chose to stop
        result["error"] = traceback.format_exc(limit=-8)[-4000:]
    out.write(json.dumps(result))
    out.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
