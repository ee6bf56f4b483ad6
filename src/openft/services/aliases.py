"""Model aliases: other names for an organization's models, so code written for a retired model keeps working.

Typical aliases: `gpt-4o-mini-2024-07-18` → a base model, `ft:gpt-4o-mini:acme:support:abc123` → the model
retrained from the same data (`openft import` sets these when the new job succeeds), an Azure deployment name →
a model or checkpoint. An alias resolves wherever a model name is accepted (services/models.py), for its own
organization only. Operators manage them with `openft aliases` (direct database access, like `openft keys`).

Rules, checked here once: an alias is not a real model name (a real name always wins, so such an alias could
never answer); its target is a real name its organization may use, never another alias (no chains, no loops).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from openft.db import aliases as aliases_db
from openft.db import repositories as repo
from openft.db.engine import read_only_sessions
from openft.db.tables import ModelAliasRow
from openft.errors import InvalidRequest, ModelNotFound, NotFound
from openft.services.models import Caller, ModelService

MAX_ALIAS_LENGTH = 256


@dataclass(frozen=True)
class AliasInfo:
    org: str
    name: str
    target: str
    created_at: int
    updated_at: int

    def to_json(self) -> dict[str, Any]:
        return {
            "org": self.org,
            "name": self.name,
            "target": self.target,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


def check_alias_name(name: str) -> None:
    if not name or len(name) > MAX_ALIAS_LENGTH:
        raise InvalidRequest(f"An alias is 1 to {MAX_ALIAS_LENGTH} characters.", param="name")
    if any(ch.isspace() or unicodedata.category(ch).startswith("C") for ch in name):
        raise InvalidRequest("An alias may not contain spaces or control characters.", param="name")


class AliasService:
    def __init__(self, sessions: sessionmaker[Session], models: ModelService):
        self._sessions = sessions
        self._reads = read_only_sessions(sessions)
        self._models = models

    def _org_id(self, session: Session, org: str) -> str:
        row = repo.get_organization_by_name(session, org)
        if row is None:
            raise NotFound(f"No organization named {org!r}.", param="org")
        return row.id

    def set(self, org: str, name: str, target: str) -> AliasInfo:
        """Create the alias `name` → `target` in organization `org` (by name), or re-point it."""
        check_alias_name(name)
        with self._reads.begin() as session:
            org_id = self._org_id(session, org)
            chained = aliases_db.get_alias(session, org_id, target)
        caller = Caller(org_id, org_id)
        try:
            self._models.resolve(caller, name, aliases=False)
        except ModelNotFound:
            pass
        else:
            raise InvalidRequest(
                f"{name!r} is already a model's name; an alias of that name could never answer.", param="name"
            )
        try:
            self._models.resolve(caller, target, aliases=False)
        except ModelNotFound:
            hint = f" It is an alias of {chained.target!r}: name that model instead." if chained is not None else ""
            raise InvalidRequest(
                f"{target!r} is not a model organization {org!r} can use (a base model, one of its fine-tuned "
                f"models or checkpoints, or a checkpoint shared with it).{hint}",
                param="target",
            ) from None
        with self._sessions.begin() as session:
            row = aliases_db.set_alias(session, org_id, name, target)
            return _info(org, row)

    def list(self, org: str | None = None) -> list[AliasInfo]:
        with self._reads.begin() as session:
            org_id = self._org_id(session, org) if org is not None else None
            names = repo.organization_names(session)
            return [
                _info(names.get(r.organization_id, r.organization_id), r)
                for r in aliases_db.list_aliases(session, org_id)
            ]

    def delete(self, org: str, name: str) -> None:
        with self._sessions.begin() as session:
            if not aliases_db.delete_alias(session, self._org_id(session, org), name):
                raise NotFound(f"Organization {org!r} has no alias {name!r}.", param="name")


def _info(org: str, row: ModelAliasRow) -> AliasInfo:
    return AliasInfo(org, row.name, row.target, row.created_at, row.updated_at)
