"""Token buckets per principal and per tenant, with per-tenant overrides and reloads."""

from __future__ import annotations

import pytest

from gateway.config import RateLimitSettings
from gateway.errors import RateLimited
from gateway.models import Principal
from gateway.ratelimit import RateLimiter

ALICE = Principal("alice", "acme")
CAROL = Principal("carol", "acme")
ALICE_BETA = Principal("alice", "beta")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def limiter(settings: dict[str, object]) -> tuple[RateLimiter, Clock]:
    clock = Clock()
    return RateLimiter(RateLimitSettings(**settings), clock), clock


def refused(limiter: RateLimiter, principal: Principal) -> RateLimited:
    with pytest.raises(RateLimited) as err:
        limiter.check(principal)
    return err.value


def test_a_burst_then_the_sustained_rate_with_an_honest_retry_after() -> None:
    rl, clock = limiter({"principal": {"requests_per_s": 0.5, "burst": 3}})
    for _ in range(3):
        rl.check(ALICE)
    error = refused(rl, ALICE)
    assert error.code == 4290 and error.retry_after_s == 2 and error.details["limit"] == "principal_requests"

    clock.now += 1.9
    refused(rl, ALICE)  # not yet: 0.95 of a token
    clock.now += 0.1
    rl.check(ALICE)
    refused(rl, ALICE)
    clock.now += 60
    for _ in range(3):  # refilled to the burst, never beyond
        rl.check(ALICE)
    refused(rl, ALICE)


def test_principals_are_counted_per_tenant_and_the_tenant_bucket_is_shared() -> None:
    rl, _ = limiter({"principal": {"requests_per_s": 1, "burst": 2}, "tenant": {"requests_per_s": 1, "burst": 3}})
    rl.check(ALICE)
    rl.check(ALICE)
    assert refused(rl, ALICE).details["limit"] == "principal_requests"
    rl.check(CAROL)
    assert refused(rl, CAROL).details["limit"] == "tenant_requests"
    rl.check(ALICE_BETA)  # the same id in another tenant has buckets of its own
    rl.check(ALICE_BETA)


def test_a_refused_request_takes_no_token_from_either_bucket() -> None:
    rl, clock = limiter({"principal": {"requests_per_s": 1, "burst": 1}, "tenant": {"requests_per_s": 1, "burst": 1}})
    rl.check(ALICE)
    assert refused(rl, CAROL).details["limit"] == "tenant_requests"
    clock.now += 1
    rl.check(CAROL)  # carol's own bucket was not charged for the refusal


def test_tenant_overrides_change_only_the_fields_they_set_and_reloads_apply_at_once() -> None:
    rl, _ = limiter({"principal": {"requests_per_s": 1, "burst": 5, "concurrent_tasks": 7},
                     "tenants": {"acme": {"principal": {"burst": 1}, "tenant": {"concurrent_tasks": 2}}}})
    rl.check(ALICE)
    refused(rl, ALICE)
    assert rl.task_quotas(ALICE) == (7, 2)
    assert rl.task_quotas(ALICE_BETA) == (7, 256)

    rl.update(RateLimitSettings(principal={"requests_per_s": 0}))
    for _ in range(100):
        rl.check(ALICE)  # 0 = unlimited


class Shared:
    """Shared buckets as the PostgreSQL store keeps them, in a dict."""

    def __init__(self) -> None:
        self.tokens: dict[str, float] = {}
        self.asked: list[list[str]] = []

    def take_tokens(self, buckets: list[tuple[str, float, int]]) -> tuple[bool, list[float]]:
        self.asked.append([name for name, _, _ in buckets])
        have = [self.tokens.setdefault(name, float(burst)) for name, _, burst in buckets]
        taken = all(t >= 1 for t in have)
        if taken:
            for name, _, _ in buckets:
                self.tokens[name] -= 1
        return taken, have


def test_shared_buckets_replace_the_processs_own() -> None:
    shared = Shared()
    rl = RateLimiter(RateLimitSettings(principal={"requests_per_s": 0.5, "burst": 2},
                                       tenant={"requests_per_s": 10, "burst": 100}), shared=shared)
    rl.check(ALICE)
    rl.check(ALICE)
    error = refused(rl, ALICE)
    assert error.details["limit"] == "principal_requests" and error.retry_after_s == 2  # 1 token at 0.5/s
    assert shared.asked[0] == ["acme\x1falice", "acme\x1f"] and shared.tokens["acme\x1f"] == 98
    rl.check(CAROL)  # her own bucket, the same tenant's
    assert shared.tokens["acme\x1f"] == 97


def test_shared_buckets_are_not_asked_without_a_limit() -> None:
    shared = Shared()
    rl = RateLimiter(RateLimitSettings(principal={"requests_per_s": 0}, tenant={"requests_per_s": 0}), shared=shared)
    rl.check(ALICE)
    assert shared.asked == []
