"""API keys on SQLite and PostgreSQL: hashed at rest, looked up per call (revocation is immediate),
listed without secrets; the server key; per-key rate limits."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from openft.db import repositories as repo
from openft.db.engine import make_engine, make_session_factory
from openft.db.migrate import upgrade
from openft.db.tables import ApiKeyRow, OrganizationRow
from openft.errors import InvalidRequest, NotFound, RateLimited
from openft.services.auth import (
    KEY_PREFIX,
    SERVER_KEY_ID,
    KeyAuthenticator,
    KeyService,
    Principal,
    RateLimiter,
    StaticKeyAuthenticator,
    ensure_organization,
)


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(database_url)
    upgrade(engine)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def keys(sessions: sessionmaker[Session]) -> KeyService:
    return KeyService(sessions)


def test_create_stores_only_the_hash_and_authenticates(keys: KeyService, sessions: sessionmaker[Session]) -> None:
    created = keys.create("team-a", project="search", rate_limit_per_minute=30)
    assert created.key.startswith(KEY_PREFIX) and len(created.key) >= len(KEY_PREFIX) + 40
    with sessions.begin() as session:
        row = session.scalar(select(ApiKeyRow).where(ApiKeyRow.id == created.info.id))
        assert row is not None
        assert row.key_hash == hashlib.sha256(created.key.encode()).hexdigest()
        stored = [str(getattr(row, column.key)) for column in ApiKeyRow.__table__.columns]
        assert not any(created.key in value for value in stored)  # the key itself is nowhere
        org = session.scalar(select(OrganizationRow).where(OrganizationRow.name == "team-a"))
        assert org is not None and row.organization_id == org.id
    principal = keys.authenticate(created.key)
    assert principal == Principal(
        org_id=created.info.org_id, key_id=created.info.id, project="search", admin=False, rate_limit_per_minute=30
    )
    assert principal.scope == created.info.org_id
    assert created.to_json()["key"] == created.key and created.to_json()["key_id"] == created.info.id
    assert {"org": "team-a", "project": "search"}.items() <= created.to_json().items()


def test_unknown_and_malformed_keys_are_refused(keys: KeyService) -> None:
    created = keys.create("team-a")
    assert keys.authenticate(created.key[:-1]) is None
    assert keys.authenticate(created.key + "x") is None
    assert keys.authenticate("sk-openft-" + "A" * 40) is None
    assert keys.authenticate("not-a-key") is None
    assert keys.authenticate("") is None


def test_admin_key_scope_is_every_organization(keys: KeyService) -> None:
    created = keys.create("ops", admin=True)
    principal = keys.authenticate(created.key)
    assert principal is not None and principal.admin and principal.scope is None


def test_organizations_are_created_once_by_name(keys: KeyService, sessions: sessionmaker[Session]) -> None:
    first = keys.create("team-a")
    second = keys.create("team-a", project="other")
    third = keys.create("team-b")
    assert first.info.org_id == second.info.org_id != third.info.org_id
    assert ensure_organization(sessions, "team-a").id == first.info.org_id
    assert first.info.org_id.startswith("org-")


def test_list_never_shows_keys_or_hashes_and_filters(keys: KeyService) -> None:
    a = keys.create("team-a", project="p")
    b = keys.create("team-b", admin=True, rate_limit_per_minute=5)
    listed = keys.list()
    assert [k.id for k in listed] == [a.info.id, b.info.id]
    for created, shown in zip((a, b), listed, strict=True):
        as_json = shown.to_json()
        assert set(as_json) == {
            "id",
            "org",
            "org_id",
            "project",
            "admin",
            "rate_limit_per_minute",
            "created_at",
            "revoked_at",
            "prefix",
        }
        assert created.key not in str(as_json) and hashlib.sha256(created.key.encode()).hexdigest() not in str(as_json)
        assert created.key.startswith(shown.prefix) and len(shown.prefix) < len(created.key) // 2
    assert listed[1].admin and listed[1].rate_limit_per_minute == 5 and listed[0].project == "p"
    assert [k.id for k in keys.list(org="team-b")] == [b.info.id]
    assert keys.list(org="nobody") == []
    keys.revoke(a.info.id)
    assert [k.id for k in keys.list(include_revoked=False)] == [b.info.id]
    assert [k.revoked_at is not None for k in keys.list()] == [True, False]


def test_revoke_is_immediate_and_idempotent(keys: KeyService) -> None:
    created = keys.create("team-a")
    other = keys.create("team-a")
    assert keys.authenticate(created.key) is not None
    revoked = keys.revoke(created.info.id)
    assert revoked.revoked_at is not None and revoked.id == created.info.id and revoked.org == "team-a"
    assert keys.authenticate(created.key) is None
    assert keys.authenticate(other.key) is not None  # only that key
    again = keys.revoke(created.info.id)
    assert again.revoked_at == revoked.revoked_at
    with pytest.raises(NotFound) as excinfo:
        keys.revoke("key-nope")
    assert excinfo.value.param == "key_id"


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"org": "a:b"}, "org"),
        ({"org": ""}, "org"),
        ({"org": "x" * 65}, "org"),
        ({"org": "a/b"}, "org"),
        ({"org": "ok", "project": "no spaces"}, "project"),
        ({"org": "ok", "rate_limit_per_minute": 0}, "rate_limit"),
    ],
)
def test_bad_names_and_limits_are_refused(keys: KeyService, kwargs: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidRequest) as excinfo:
        keys.create(**kwargs)  # type: ignore[arg-type]
    assert excinfo.value.param == param
    assert keys.list() == []


def test_server_key_first_then_database_keys(keys: KeyService, sessions: sessionmaker[Session]) -> None:
    default_org = ensure_organization(sessions, "openft").id
    auth = KeyAuthenticator(StaticKeyAuthenticator("sk-server", default_org), keys)
    server = auth.authenticate("sk-server")
    assert server == Principal(org_id=default_org, key_id=SERVER_KEY_ID, admin=True)
    created = keys.create("team-a")
    principal = auth.authenticate(created.key)
    assert principal is not None and principal.key_id == created.info.id and not principal.admin
    assert auth.authenticate("sk-server2") is None
    keys.revoke(created.info.id)
    assert auth.authenticate(created.key) is None
    assert StaticKeyAuthenticator("k", default_org, admin=False).authenticate("k") == Principal(
        org_id=default_org, key_id=SERVER_KEY_ID
    )


def test_repository_lookup_is_by_hash(keys: KeyService, sessions: sessionmaker[Session]) -> None:
    created = keys.create("team-a")
    digest = hashlib.sha256(created.key.encode()).hexdigest()
    with sessions.begin() as session:
        found = repo.find_api_key_by_hash(session, digest)
        assert found is not None and found.id == created.info.id
        assert repo.find_api_key_by_hash(session, "0" * 64) is None
        assert repo.revoke_api_key(session, created.info.id, 123)
        assert not repo.revoke_api_key(session, created.info.id, 456)  # the first revocation stays
        assert not repo.revoke_api_key(session, "key-nope", 1)
    with sessions.begin() as session:
        row = repo.get_api_key(session, created.info.id)
        assert row is not None and row.revoked_at == 123


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_limiter_token_bucket() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock)
    limited = Principal(org_id="org-a", key_id="key-a", rate_limit_per_minute=3)
    other = Principal(org_id="org-a", key_id="key-b", rate_limit_per_minute=3)
    free = Principal(org_id="org-a", key_id="key-c")
    for _ in range(3):
        limiter.admit(limited)  # a burst of N
    with pytest.raises(RateLimited) as excinfo:
        limiter.admit(limited)
    assert excinfo.value.code == "rate_limit_exceeded"
    assert excinfo.value.retry_after == pytest.approx(20.0)  # one token every 60/3 s
    limiter.admit(other)  # buckets are per key
    for _ in range(100):
        limiter.admit(free)  # no limit
    clock.now += 10
    with pytest.raises(RateLimited) as excinfo:
        limiter.admit(limited)
    assert excinfo.value.retry_after == pytest.approx(10.0)
    clock.now += 10
    limiter.admit(limited)
    with pytest.raises(RateLimited):
        limiter.admit(limited)
    clock.now += 3600  # refills to the burst size, not beyond
    for _ in range(3):
        limiter.admit(limited)
    with pytest.raises(RateLimited):
        limiter.admit(limited)
