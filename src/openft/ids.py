"""Type-prefixed random ids, shaped like OpenAI's (`file-…`, `ftjob-…`, `ftevent-…`, `ftckpt-…`).

The random part is base62 so ids are URL-safe and the first eight characters of a job id can
name its fine-tuned model (`ft:{base}:{org}:{suffix}:{id8}`) as OpenAI's names do.
"""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.ascii_letters + string.digits


def random_token(length: int = 24) -> str:
    """A cryptographically random base62 string."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def new_id(prefix: str, length: int = 24) -> str:
    return f"{prefix}-{random_token(length)}"


def file_id() -> str:
    return new_id("file")


def job_id() -> str:
    return new_id("ftjob")


def event_id() -> str:
    return new_id("ftevent")


def checkpoint_id() -> str:
    return new_id("ftckpt")


def checkpoint_permission_id() -> str:
    """OpenAI's shape (`cp_…`, underscore), which clients may recognise."""
    return f"cp_{random_token(24)}"


def short_job_id(job_id: str) -> str:
    """The eight characters of a job id that appear at the end of its fine-tuned model's name."""
    return job_id.split("-", 1)[-1][:8]
