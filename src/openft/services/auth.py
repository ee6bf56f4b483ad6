"""Who is calling: API keys → the organization that owns everything the caller creates or sees."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Principal:
    org_id: str
    key_id: str


class Authenticator(Protocol):
    def authenticate(self, key: str) -> Principal | None: ...


class StaticKeyAuthenticator:
    """One API key for one organization (the server's key from the flag, env or data dir)."""

    def __init__(self, key: str, org_id: str):
        self._key = key.encode()
        self._org_id = org_id

    def authenticate(self, key: str) -> Principal | None:
        if hmac.compare_digest(key.encode(), self._key):
            return Principal(org_id=self._org_id, key_id="key-server")
        return None
