"""Request rate limits: a token bucket per principal and one per tenant.

A request takes one token from its principal's bucket and one from its tenant's; when
either is empty nothing is taken and the caller gets :class:`RateLimited` (4290) with the
seconds until a token is back as Retry-After. Buckets refill continuously at
``requests_per_s`` up to ``burst`` (the classic token bucket, e.g. RFC 2697's committed
burst). Limits come from ``rate_limits`` with per-tenant overrides, and a config reload
applies new limits to existing buckets at once.

Where the buckets live: in this process, or, when the gateway's replicas share a
PostgreSQL task store, in a table of that store (:class:`SharedBuckets`), so the configured
rate holds for all replicas together rather than for each. A shared bucket costs a round
trip to the server per call (bench/replicas.py measures it); when the server cannot be
asked, the call fails (StorageError, 5002) rather than go unlimited.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from gateway.config import RateLimit, RateLimitSettings
from gateway.errors import RateLimited
from gateway.models import Principal

__all__ = ["RateLimiter", "SharedBuckets"]

#: Whose limit a bucket name is, for the refusal's message.
_WHO = {"principal_requests": "principal", "tenant_requests": "tenant", "upstream_server": "upstream MCP server",
        "upstream_principal": "principal on this upstream MCP server"}
_MAX_BUCKETS = 100_000  # idle buckets beyond this are forgotten (a forgotten bucket is full)


class _Bucket:
    __slots__ = ("tokens", "stamp")

    def __init__(self, burst: int, now: float) -> None:
        self.tokens = float(burst)
        self.stamp = now

    def refill(self, limit: RateLimit, now: float) -> None:
        self.tokens = min(float(limit.burst), self.tokens + (now - self.stamp) * limit.requests_per_s)
        self.stamp = now


@runtime_checkable
class SharedBuckets(Protocol):
    """Token buckets every replica shares (the PostgreSQL task store)."""

    def take_tokens(self, buckets: Sequence[tuple[str, float, int]]) -> tuple[bool, list[float]]:
        """Take a token from each of ``buckets`` (name, refill per second, burst) if each
        has one; returns whether they were taken and the tokens each had."""
        ...


class RateLimiter:
    """Token buckets by principal ``(tenant, id)`` and by tenant. Thread-safe.

    Args:
        settings: the ``rate_limits`` section.
        clock: monotonic seconds (tests pass their own).
        shared: buckets shared by replicas, used instead of this process's own.
    """

    def __init__(self, settings: RateLimitSettings, clock: Callable[[], float] = time.monotonic,
                 shared: SharedBuckets | None = None) -> None:
        self._clock = clock
        self._shared = shared
        self._lock = threading.Lock()
        self.update(settings)
        self._buckets: OrderedDict[tuple[str, str | None], _Bucket] = OrderedDict()

    def update(self, settings: RateLimitSettings) -> None:
        """Apply new limits (config reload); buckets keep their tokens, capped at the new burst."""
        defaults = (settings.principal, settings.tenant)
        overrides = {tenant: settings.resolve(tenant) for tenant in settings.tenants}
        with self._lock:
            self._defaults, self._overrides = defaults, overrides

    def _limits(self, tenant: str) -> tuple[RateLimit, RateLimit]:
        return self._overrides.get(tenant, self._defaults)

    def task_quotas(self, principal: Principal) -> tuple[int, int]:
        """``(principal, tenant)`` caps on tasks queued or running at once; 0 = no cap."""
        mine, tenant = self._limits(principal.tenant)
        return mine.concurrent_tasks, tenant.concurrent_tasks

    def check(self, principal: Principal) -> None:
        """Take one request token for ``principal`` and its tenant.

        Raises:
            RateLimited (4290): a bucket is empty; ``retry_after_s`` is the whole seconds
                until it has a token again, ``details.limit`` names it
                (``principal_requests`` / ``tenant_requests``).
            StorageError (5002): the shared buckets could not be asked.
        """
        keys = ((principal.tenant, principal.id), (principal.tenant, None))
        self.take(list(zip(keys, self._limits(principal.tenant), ("principal_requests", "tenant_requests"),
                           strict=True)))

    def take(self, buckets: Sequence[tuple[tuple[str, str | None], RateLimit, str]]) -> None:
        """Take one token from each of ``buckets`` (key, limit, name) if each has one, else
        none. A key is ``(tenant, principal id)`` or ``(tenant, None)``, or any other pair of
        names without ``\x1f`` (e.g. an upstream MCP server's buckets); limits with
        ``requests_per_s`` 0 are not counted.

        Raises:
            RateLimited (4290): a bucket is empty; ``details.limit`` is its name.
            StorageError (5002): the shared buckets could not be asked.
        """
        limited = [(key, limit, name) for key, limit, name in buckets if limit.requests_per_s > 0]
        if not limited:
            return
        if self._shared is not None:
            # "tenant\x1fprincipal", and "tenant\x1f" for the tenant's own bucket.
            taken, tokens = self._shared.take_tokens(
                [(f"{key[0]}\x1f{key[1] or ''}", limit.requests_per_s, limit.burst) for key, limit, _ in limited])
            if not taken:
                (_, limit, name), left = next((b, t) for b, t in zip(limited, tokens, strict=True) if t < 1.0)
                raise _refusal(limit, name, left)
            return
        with self._lock:
            now = self._clock()
            found = []
            for key, limit, name in limited:
                bucket = self._bucket(key, limit, now)
                if bucket.tokens < 1.0:
                    raise _refusal(limit, name, bucket.tokens)
                found.append(bucket)
            for bucket in found:
                bucket.tokens -= 1.0

    def _bucket(self, key: tuple[str, str | None], limit: RateLimit, now: float) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(limit.burst, now)
            if len(self._buckets) > _MAX_BUCKETS:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket.refill(limit, now)
        return bucket


def _refusal(limit: RateLimit, name: str, tokens: float) -> RateLimited:
    """The refusal of a call whose bucket ``name`` holds ``tokens`` (< 1)."""
    return RateLimited(
        f"rate limit of {limit.requests_per_s:g} requests/s (burst {limit.burst}) "
        f"for this {_WHO.get(name, name)} exceeded",
        retry_after_s=max(1, math.ceil((1.0 - tokens) / limit.requests_per_s)),
        details={"limit": name, "requests_per_s": limit.requests_per_s, "burst": limit.burst},
    )
