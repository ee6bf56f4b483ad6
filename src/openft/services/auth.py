"""Who is calling: API keys → the organization (and project) that owns what the caller creates or sees.

Two kinds of key reach the same `Principal`:

- the server's own key (`--api-key`, `OPENFT_API_KEY` or the generated `DATA_DIR/api_key`): it belongs
  to the default organization and is an admin key, because whoever holds it runs the server;
- keys made with `openft keys create`, kept in the `api_keys` table as the SHA-256 of the key. They are
  looked up by that hash on every request (one indexed read), so a key created or revoked while the
  server runs counts at once, in every server and worker process sharing the database.

A plain SHA-256 is enough: keys carry 40 random base62 characters (~238 bits), so there is nothing to
brute-force, unlike passwords that need a slow hash. Revoked keys stay in the table (for listings) and
never authenticate again.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from openft import ids
from openft.db import repositories as repo
from openft.db.engine import read_only_sessions
from openft.db.tables import ApiKeyRow, OrganizationRow
from openft.errors import InvalidRequest, NotFound, RateLimited
from openft.services import quotas

KEY_PREFIX = "sk-openft-"
KEY_RANDOM_CHARS = 40
SHOWN_PREFIX_CHARS = len(KEY_PREFIX) + 4
"""`prefix` in listings: enough to tell keys apart, far too little to guess the rest."""
SERVER_KEY_ID = "key-server"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
"""Organization and project names: an organization's name is part of model names (`ft:{base}:{org}:…`),
so no `:` or `/`, and short."""
MAX_RATE_LIMIT = 1_000_000


@dataclass(frozen=True)
class Principal:
    org_id: str
    key_id: str
    project: str | None = None
    admin: bool = False
    rate_limit_per_minute: int | None = None

    @property
    def scope(self) -> str | None:
        """The organization whose objects this caller reads and changes; None (admin keys) means every one.

        What a caller creates always belongs to its own `org_id` and `project`.
        """
        return None if self.admin else self.org_id


class Authenticator(Protocol):
    def authenticate(self, key: str) -> Principal | None: ...


def generate_key() -> str:
    return KEY_PREFIX + ids.random_token(KEY_RANDOM_CHARS)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class StaticKeyAuthenticator:
    """One API key for one organization (the server's key from the flag, env or data dir); admin by default."""

    def __init__(self, key: str, org_id: str, *, admin: bool = True):
        self._key = key.encode()
        self._org_id = org_id
        self._admin = admin

    def authenticate(self, key: str) -> Principal | None:
        if hmac.compare_digest(key.encode(), self._key):
            return Principal(org_id=self._org_id, key_id=SERVER_KEY_ID, admin=self._admin)
        return None


@dataclass(frozen=True)
class ApiKeyInfo:
    """A key as listings show it: never the key itself nor its hash."""

    id: str
    org: str
    org_id: str
    project: str | None
    admin: bool
    rate_limit_per_minute: int | None
    created_at: int
    revoked_at: int | None
    prefix: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "org": self.org,
            "org_id": self.org_id,
            "project": self.project,
            "admin": self.admin,
            "rate_limit_per_minute": self.rate_limit_per_minute,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
            "prefix": self.prefix,
        }


@dataclass(frozen=True)
class CreatedKey:
    """A new key: the only time the full key is available (only its hash is stored)."""

    key: str
    info: ApiKeyInfo

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "key_id": self.info.id, **self.info.to_json()}


def _info(row: ApiKeyRow, org_name: str) -> ApiKeyInfo:
    return ApiKeyInfo(
        id=row.id,
        org=org_name,
        org_id=row.organization_id,
        project=row.project,
        admin=bool(row.admin),
        rate_limit_per_minute=row.rate_limit_per_minute,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
        prefix=row.prefix,
    )


def check_name(value: str, param: str) -> str:
    if not NAME_PATTERN.match(value):
        raise InvalidRequest(
            f"Invalid {param} name {value!r}: use 1-64 characters of letters, digits, '.', '_' and '-', "
            "starting with a letter or digit.",
            param=param,
        )
    return value


def ensure_organization(sessions: sessionmaker[Session], name: str) -> OrganizationRow:
    """The organization called `name`, created on first use (by the server for its default organization,
    by `openft keys create --org NAME` for the others).

    Two processes creating the same new organization at once collide on the unique name; the loser
    reads the winner's row.
    """
    for attempt in range(2):
        try:
            with sessions.begin() as session:
                row = repo.get_organization_by_name(session, name)
                if row is None:
                    row = repo.ensure_organization(session, "org-" + secrets.token_hex(12), name)
                return row
        except IntegrityError:
            if attempt:
                raise
    raise AssertionError("unreachable")


class KeyService:
    """Create, list, revoke and check the API keys kept in the database."""

    def __init__(self, sessions: sessionmaker[Session]):
        self._sessions = sessions
        self._reads = read_only_sessions(sessions)  # the lookup on every request never takes SQLite's write lock

    def create(
        self,
        org: str,
        *,
        project: str | None = None,
        admin: bool = False,
        rate_limit_per_minute: int | None = None,
        limits: dict[str, int | None] | None = None,
    ) -> CreatedKey:
        """A new key of `org` (created on first use); `limits` (services/quotas.py) are set on the organization,
        so they hold for all its keys."""
        check_name(org, "org")
        if project is not None:
            check_name(project, "project")
        if rate_limit_per_minute is not None and not 1 <= rate_limit_per_minute <= MAX_RATE_LIMIT:
            raise InvalidRequest(
                f"rate limit must be between 1 and {MAX_RATE_LIMIT} requests per minute.", param="rate_limit"
            )
        organization = ensure_organization(self._sessions, org)
        if limits:
            quotas.set_limits(self._sessions, organization.id, limits)
        key = generate_key()
        row = ApiKeyRow(
            id=ids.new_id("key"),
            organization_id=organization.id,
            project=project,
            key_hash=hash_key(key),
            prefix=key[:SHOWN_PREFIX_CHARS],
            admin=admin,
            rate_limit_per_minute=rate_limit_per_minute,
            created_at=int(time.time()),
            revoked_at=None,
        )
        with self._sessions.begin() as session:
            repo.add_api_key(session, row)
        return CreatedKey(key=key, info=_info(row, organization.name))

    def set_organization_limits(self, org: str, limits: dict[str, int | None]) -> quotas.OrganizationLimits:
        """Change an existing organization's limits (`openft orgs set-limits`)."""
        with self._sessions.begin() as session:
            row = repo.get_organization_by_name(session, check_name(org, "org"))
            if row is None:
                raise NotFound(f"No such organization: {org}", param="org")
            org_id = row.id
        return quotas.set_limits(self._sessions, org_id, limits)

    def organizations(self) -> list[dict[str, Any]]:
        """Every organization with its limits (None: unlimited), oldest first."""
        with self._sessions.begin() as session:
            rows = repo.list_organizations(session)
            return [{"id": r.id, "org": r.name, **quotas.limits_of(r).to_json()} for r in rows]

    def list(self, *, org: str | None = None, include_revoked: bool = True) -> list[ApiKeyInfo]:
        """Every key (oldest first), or one organization's; an unknown organization has none."""
        with self._sessions.begin() as session:
            names = repo.organization_names(session)
            org_id: str | None = None
            if org is not None:
                org_id = next((i for i, name in names.items() if name == org), None)
                if org_id is None:
                    return []
            rows = repo.list_api_keys(session, org_id=org_id, include_revoked=include_revoked)
            return [_info(row, names.get(row.organization_id, row.organization_id)) for row in rows]

    def revoke(self, key_id: str) -> ApiKeyInfo:
        """Revoke a key for good; revoking a revoked key changes nothing (its first `revoked_at` stays)."""
        with self._sessions.begin() as session:
            repo.revoke_api_key(session, key_id, int(time.time()))
            row = repo.get_api_key(session, key_id)
            if row is None:
                raise NotFound(f"No such API key: {key_id}", param="key_id")
            session.refresh(row)
            organization = repo.get_organization(session, row.organization_id)
            return _info(row, organization.name if organization else row.organization_id)

    def authenticate(self, key: str) -> Principal | None:
        """The live key's principal, read from the database on every call (no cache: revocation is immediate)."""
        if not key.startswith(KEY_PREFIX) or len(key) > 256:
            return None
        digest = hash_key(key)
        with self._reads.begin() as session:
            row = repo.find_api_key_by_hash(session, digest)
            if row is None or row.revoked_at is not None or not hmac.compare_digest(row.key_hash, digest):
                return None
            return Principal(
                org_id=row.organization_id,
                key_id=row.id,
                project=row.project,
                admin=bool(row.admin),
                rate_limit_per_minute=row.rate_limit_per_minute,
            )


class KeyAuthenticator:
    """The server's own key first (compared in memory), then the keys in the database."""

    def __init__(self, server_key: Authenticator | None, keys: KeyService):
        self._server_key = server_key
        self._keys = keys

    def authenticate(self, key: str) -> Principal | None:
        if self._server_key is not None:
            principal = self._server_key.authenticate(key)
            if principal is not None:
                return principal
        return self._keys.authenticate(key)


class RateLimiter:
    """Per-key token buckets: a key with a limit of N requests per minute may burst N requests, then
    gets one more every 60/N seconds. In memory, so the limit holds per server process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # key id → (tokens, time of last update)

    def admit(self, principal: Principal) -> None:
        """Take one token for this request, or raise `RateLimited` with the seconds until one is free."""
        limit = principal.rate_limit_per_minute
        if limit is None:
            return
        rate = limit / 60.0
        with self._lock:
            now = self._clock()
            tokens, last = self._buckets.get(principal.key_id, (float(limit), now))
            tokens = min(float(limit), tokens + (now - last) * rate)
            if tokens < 1.0:
                self._buckets[principal.key_id] = (tokens, now)
                wait = (1.0 - tokens) / rate
                raise RateLimited(
                    f"Rate limit reached for requests: this key allows {limit} per minute. "
                    f"Please try again in {wait:.1f}s.",
                    retry_after=wait,
                )
            self._buckets[principal.key_id] = (tokens - 1.0, now)
