"""Throttling of wrong API keys per client address.

Keys carry ~238 random bits, so guessing one is hopeless; what a stream of wrong keys does cost is a database
lookup each (in the small pool of key-check threads, see `api.auth_gate`), log noise, and, for an operator who
chose a short `--api-key`, a guessing channel. So each client address may present a bounded number of wrong
keys: a token bucket per address that holds `limit` failures and refills `limit` per `window_seconds`. Past it,
a wrong key is answered 429 `rate_limit_exceeded` with `Retry-After` instead of 401.

Only failures are counted, and a correct key is still accepted from a throttled address: someone sending
garbage from the same address (a shared NAT, a proxy) cannot lock out a user who holds a key. Requests with no
key at all are not counted either; they are refused from their headers alone and cost nothing.

In memory and per server process, like the per-key rate limit. The table is bounded (`max_clients`): when full,
the address that failed least recently is forgotten first.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

DEFAULT_MAX_CLIENTS = 65_536


class FailedKeyThrottle:
    """Counts wrong keys per client address; `retry_after` says whether (and for how long) one is throttled."""

    def __init__(
        self,
        limit: int,
        window_seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = DEFAULT_MAX_CLIENTS,
    ):
        """`limit` 0 turns throttling off."""
        self.limit = limit
        self.window_seconds = window_seconds
        self._clock = clock
        self._max_clients = max_clients
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # address → (tokens, last update)

    def _tokens(self, client: str, now: float) -> float:
        tokens, last = self._buckets.get(client, (float(self.limit), now))
        return min(float(self.limit), tokens + (now - last) * self.limit / self.window_seconds)

    def retry_after(self, client: str) -> float | None:
        """Seconds until `client` may present another wrong key; None when it may now (or throttling is off)."""
        if self.limit <= 0:
            return None
        with self._lock:
            tokens = self._tokens(client, self._clock())
        if tokens >= 1.0:
            return None
        return (1.0 - tokens) * self.window_seconds / self.limit

    def record_failure(self, client: str) -> None:
        """One wrong key from `client`: take a token (never below zero, so a flood does not extend the wait)."""
        if self.limit <= 0:
            return
        with self._lock:
            now = self._clock()
            tokens = max(0.0, self._tokens(client, now) - 1.0)
            self._buckets[client] = (tokens, now)
            self._buckets.move_to_end(client)
            while len(self._buckets) > self._max_clients:
                self._buckets.popitem(last=False)
