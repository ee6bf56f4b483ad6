"""What a tenant may read about the server: no file system paths, host names or process ids.

Job events, a job's `error` and API error messages are read by the job's owner, who is not the operator:
a path tells them how the server's disks are laid out (and other tenants' job ids, user names, mount
points). Server detail goes to the logs (train.log, the server's log) instead; texts meant for tenants
are written without it, and `redact_paths` is the last line of defence for texts built from exceptions,
whose messages name files freely.
"""

from __future__ import annotations

import re
from typing import Any

SERVER_PATH = "[server path]"
"""What an absolute path in a tenant-visible text is replaced with."""

_ABSOLUTE_PATH = re.compile(r"(?<![\w:/.~\\-])/[^\s'\"`()\[\]{}<>,;|]+")
"""An absolute POSIX path: a `/` that starts a word (not `a/b`, `N/A`, `https://host/x` or `~/.netrc`),
up to whitespace, a quote or a bracket. File names with spaces lose only their first part; that is
enough to hide the layout."""

SERVER_ONLY_EVENT_DATA = frozenset({"worker_id", "path", "checkpoint", "hostname", "pid", "queue_length"})
"""Keys of an event's `data` kept in the database for operators and tests but never sent to tenants."""


def redact_paths(text: str) -> str:
    """`text` with every absolute file system path replaced by SERVER_PATH."""
    return _ABSOLUTE_PATH.sub(SERVER_PATH, text)


def tenant_error(error: dict[str, Any]) -> dict[str, Any]:
    """A job's stored `error` as its owner sees it: the message without server paths (rows written before
    failures were redacted at the source may still hold them)."""
    return {**error, "message": redact_paths(str(error.get("message") or ""))}


def tenant_event_data(data: dict[str, Any] | None) -> dict[str, Any]:
    """An event's `data` as its job's owner sees it: without SERVER_ONLY_EVENT_DATA, paths redacted."""
    return {
        key: redact_paths(value) if isinstance(value, str) else value
        for key, value in (data or {}).items()
        if key not in SERVER_ONLY_EVENT_DATA
    }
