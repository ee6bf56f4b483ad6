"""Webhook endpoints of organizations, and the signature of what is sent to them (README: Webhooks).

Endpoints are added by the operator only (`openft webhooks add URL --org ORG`, straight on the database, like
`openft keys create`): no API request can make the server call an address, so a tenant cannot point it at
internal services. Each endpoint gets its own secret, `whsec_` and 32 random bytes in base64, printed once by
`add` and kept as it is in the database, because the server needs it to sign (it is not a password: a hash
would be useless).

Deliveries are signed the Standard Webhooks way, as OpenAI signs its own, so the official SDK's
`client.webhooks.unwrap(body, headers, secret=…)` verifies them: `webhook-id` (the event id, the same on every
try), `webhook-timestamp` (unix seconds of this try) and `webhook-signature: v1,<base64 HMAC-SHA256 of
"{id}.{timestamp}.{body}" keyed with the secret's decoded bytes>`. Each try is signed afresh, so a retry hours
later still passes the receiver's 5-minute replay window.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.orm import Session, sessionmaker

from openft import ids
from openft.db import repositories as repo
from openft.db import webhooks as outbox
from openft.db.tables import WebhookAttemptRow, WebhookDeliveryRow, WebhookEndpointRow
from openft.errors import InvalidRequest, NotFound
from openft.services.auth import check_name, ensure_organization

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
MAX_URL_LENGTH = 2048
EVENT_TYPES = tuple(outbox.EVENT_TYPES.values())
"""Every event type an endpoint can receive; an endpoint added without `--events` receives them all."""


def generate_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def signature(secret: str, message_id: str, timestamp: int, body: str) -> str:
    """The `webhook-signature` header value (Standard Webhooks `v1`): what the SDK's `verify_signature`
    recomputes. A `whsec_` secret is keyed by its base64-decoded bytes, any other by its UTF-8 bytes."""
    key = base64.b64decode(secret[len(SECRET_PREFIX) :]) if secret.startswith(SECRET_PREFIX) else secret.encode()
    digest = hmac.new(key, f"{message_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(secret: str, event_id: str, body: str, *, now: float | None = None) -> dict[str, str]:
    """The headers of one try of an event."""
    timestamp = int(time.time() if now is None else now)
    return {
        "content-type": "application/json",
        "user-agent": "openft-webhooks/1",
        "webhook-id": event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secret, event_id, timestamp, body),
    }


def check_url(url: str) -> str:
    """Only absolute http(s) URLs with a host: the deliverer must never be pointed at `file:` or the like."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(f"Webhook URL must be an http:// or https:// URL with a host, not {url!r}.", param="url")
    if len(url) > MAX_URL_LENGTH:
        raise InvalidRequest(f"Webhook URL is longer than {MAX_URL_LENGTH} characters.", param="url")
    return url


def check_event_types(event_types: list[str] | None) -> list[str]:
    if not event_types:
        return list(EVENT_TYPES)
    unknown = [name for name in event_types if name not in EVENT_TYPES]
    if unknown:
        raise InvalidRequest(
            f"Unknown event type(s) {', '.join(unknown)}; known: {', '.join(EVENT_TYPES)}.", param="events"
        )
    return list(dict.fromkeys(event_types))


@dataclass(frozen=True)
class EndpointInfo:
    id: str
    org: str
    url: str
    event_types: list[str]
    created_at: int

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "webhook_endpoint",
            "org": self.org,
            "url": self.url,
            "event_types": self.event_types,
            "created_at": self.created_at,
        }


@dataclass(frozen=True)
class CreatedEndpoint:
    info: EndpointInfo
    secret: str

    def to_json(self) -> dict[str, Any]:
        return {**self.info.to_json(), "secret": self.secret}


@dataclass(frozen=True)
class DeliveryInfo:
    row: WebhookDeliveryRow
    endpoint: WebhookEndpointRow
    org: str
    attempts: list[WebhookAttemptRow]

    def to_json(self) -> dict[str, Any]:
        row = self.row
        return {
            "id": row.id,
            "object": "webhook_delivery",
            "endpoint_id": row.endpoint_id,
            "org": self.org,
            "url": self.endpoint.url,
            "event_id": row.event_id,
            "event_type": row.event_type,
            "job_id": row.job_id,
            "status": row.status,
            "created_at": row.created_at,
            "attempt_count": row.attempts,
            "next_attempt_at": row.next_attempt_at if row.status == outbox.PENDING else None,
            "delivered_at": row.delivered_at,
            "last_status_code": row.last_status_code,
            "last_error": row.last_error,
            "attempts": [
                {
                    "attempted_at": attempt.attempted_at,
                    "status_code": attempt.status_code,
                    "error": attempt.error,
                    "duration_ms": attempt.duration_ms,
                }
                for attempt in self.attempts
            ],
        }


class WebhookService:
    """Add, list and delete endpoints; list deliveries and their attempts (the `openft webhooks` commands)."""

    def __init__(self, sessions: sessionmaker[Session]):
        self._sessions = sessions

    def add(self, url: str, *, org: str, event_types: list[str] | None = None) -> CreatedEndpoint:
        """A new endpoint of `org` (created on first use, as `openft keys create` does) and its secret."""
        check_name(org, "org")
        check_url(url)
        types = check_event_types(event_types)
        organization = ensure_organization(self._sessions, org)
        row = WebhookEndpointRow(
            id=ids.new_id("wh"),
            organization_id=organization.id,
            url=url,
            secret=generate_secret(),
            event_types=types,
            created_at=int(time.time()),
        )
        with self._sessions.begin() as session:
            outbox.add_endpoint(session, row)
        return CreatedEndpoint(info=_info(row, organization.name), secret=row.secret)

    def endpoints(self, *, org: str | None = None) -> list[EndpointInfo]:
        """Every endpoint (oldest first), or one organization's; an unknown organization has none."""
        with self._sessions.begin() as session:
            names = repo.organization_names(session)
            org_id = _org_id(names, org)
            if org is not None and org_id is None:
                return []
            rows = outbox.list_endpoints(session, org_id)
            return [_info(row, names.get(row.organization_id, row.organization_id)) for row in rows]

    def delete(self, endpoint_id: str) -> EndpointInfo:
        """Remove an endpoint: nothing more is sent to it, and its deliveries and their attempts go with it."""
        with self._sessions.begin() as session:
            row = outbox.get_endpoint(session, endpoint_id)
            if row is None:
                raise NotFound(f"No such webhook endpoint: {endpoint_id}", param="endpoint_id")
            organization = repo.get_organization(session, row.organization_id)
            info = _info(row, organization.name if organization else row.organization_id)
            outbox.delete_endpoint(session, endpoint_id)
        return info

    def deliveries(self, *, org: str | None = None, limit: int = 100) -> list[DeliveryInfo]:
        """The newest `limit` deliveries with their attempts, newest first."""
        with self._sessions.begin() as session:
            names = repo.organization_names(session)
            org_id = _org_id(names, org)
            if org is not None and org_id is None:
                return []
            rows = outbox.list_deliveries(session, org_id=org_id, limit=limit)
            attempts = outbox.attempts_of(session, [delivery.id for delivery, _ in rows])
            return [
                DeliveryInfo(
                    row=delivery,
                    endpoint=endpoint,
                    org=names.get(endpoint.organization_id, endpoint.organization_id),
                    attempts=attempts[delivery.id],
                )
                for delivery, endpoint in rows
            ]


def _org_id(names: dict[str, str], org: str | None) -> str | None:
    if org is None:
        return None
    return next((org_id for org_id, name in names.items() if name == org), None)


def _info(row: WebhookEndpointRow, org: str) -> EndpointInfo:
    return EndpointInfo(
        id=row.id, org=org, url=row.url, event_types=list(row.event_types or []), created_at=row.created_at
    )
