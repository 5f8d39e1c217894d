"""The store contract for what the fleet shares beyond records: lease renewal and circuit breakers."""

from __future__ import annotations

import asyncio

from worker.store import BreakerRecord, ClaimStatus, Lease, Stores

A, FP = "acct", "fp-1"
T0 = 1_700_000_000.0
LEASE = 10.0
VENDOR = "pidj"


class TestRenew:
    async def test_renewal_keeps_a_running_attempt_busy(self, stores: Stores) -> None:
        """A renewed lease is live past its first expiry: other claims stay BUSY until the new end."""
        store = stores.idempotency
        claim = await store.claim(A, "c1", FP, T0, LEASE)
        assert claim.attempt_started_at is not None
        renewed = await store.renew([Lease(A, "c1", claim.attempt_started_at)], T0 + 8, LEASE)
        assert renewed == [True]
        busy = await store.claim(A, "c1", FP, T0 + LEASE + 1, LEASE)
        assert busy.status is ClaimStatus.BUSY and busy.lease_until == T0 + 8 + LEASE

    async def test_unrenewed_lease_expires(self, stores: Stores) -> None:
        """Without renewal (the worker died) the short lease lapses and a claim sees EXPIRED."""
        store = stores.idempotency
        await store.claim(A, "c1", FP, T0, LEASE)
        assert (await store.claim(A, "c1", FP, T0 + LEASE + 0.5, LEASE)).status is ClaimStatus.EXPIRED

    async def test_batch_renews_only_attempts_still_ours(self, stores: Stores) -> None:
        """One call renews many; a finished, released or taken-over attempt is not renewed (False)."""
        store = stores.idempotency
        started = {}
        for name in ("live", "done", "released", "taken"):
            claim = await store.claim(A, name, FP, T0, LEASE)
            assert claim.attempt_started_at is not None
            started[name] = claim.attempt_started_at
        await store.complete(A, "done", FP, b'{"e":1}', T0 + 1)
        await store.release(A, "released")
        expired = await store.claim(A, "taken", FP, T0 + LEASE + 1, LEASE)
        assert expired.status is ClaimStatus.EXPIRED and expired.lease_until is not None
        took = await store.take_over(A, "taken", expired.lease_until, T0 + LEASE + 1, LEASE)
        assert took.status is ClaimStatus.ACQUIRED
        leases = [
            Lease(A, name, started.get(name, T0)) for name in ("live", "done", "released", "taken", "never")
        ]
        assert await store.renew(leases, T0 + LEASE + 2, LEASE) == [True, False, False, False, False]
        # The taken-over attempt keeps the lease its new owner got.
        busy = await store.claim(A, "taken", FP, T0 + LEASE + 3, LEASE)
        assert busy.status is ClaimStatus.BUSY and busy.lease_until == T0 + 2 * LEASE + 1

    async def test_empty_batch(self, stores: Stores) -> None:
        """Renewing nothing is a no-op."""
        assert await stores.idempotency.renew([], T0, LEASE) == []


class TestBreakers:
    async def test_closed_until_tripped(self, stores: Stores) -> None:
        """No record = closed; a trip is seen by every reader with its end of cool-down."""
        breakers = stores.breakers
        assert breakers is not None
        assert await breakers.breaker(VENDOR) is None
        await breakers.trip(VENDOR, T0 + 30)
        assert await breakers.breaker(VENDOR) == BreakerRecord(T0 + 30, 0.0)
        assert await breakers.breaker("peerly") is None

    async def test_no_probe_during_cooldown(self, stores: Stores) -> None:
        """Before the cool-down ends nobody may probe."""
        breakers = stores.breakers
        assert breakers is not None
        await breakers.trip(VENDOR, T0 + 30)
        granted, record = await breakers.take_probe(VENDOR, T0 + 29, T0 + 59)
        assert not granted and record == BreakerRecord(T0 + 30, 0.0)

    async def test_one_probe_per_cooldown_across_workers(self, stores: Stores) -> None:
        """Many workers asking at once after the cool-down: exactly one gets the probe."""
        breakers = stores.breakers
        assert breakers is not None
        await breakers.trip(VENDOR, T0 + 30)
        answers = await asyncio.gather(*(breakers.take_probe(VENDOR, T0 + 31, T0 + 61) for _ in range(20)))
        assert sum(granted for granted, _ in answers) == 1
        assert all(record == BreakerRecord(T0 + 30, T0 + 61) for _, record in answers)
        # While the probe lease runs, still nobody else.
        assert not (await breakers.take_probe(VENDOR, T0 + 60, T0 + 90))[0]

    async def test_dead_probers_lease_lapses(self, stores: Stores) -> None:
        """A prober that died never answers: after its probe lease another worker may probe."""
        breakers = stores.breakers
        assert breakers is not None
        await breakers.trip(VENDOR, T0 + 30)
        assert (await breakers.take_probe(VENDOR, T0 + 31, T0 + 61))[0]
        assert (await breakers.take_probe(VENDOR, T0 + 62, T0 + 92))[0]

    async def test_trip_again_and_reset(self, stores: Stores) -> None:
        """A failed probe trips again (new cool-down, probe lease gone); a successful one closes for all."""
        breakers = stores.breakers
        assert breakers is not None
        await breakers.trip(VENDOR, T0 + 30)
        assert (await breakers.take_probe(VENDOR, T0 + 31, T0 + 61))[0]
        await breakers.trip(VENDOR, T0 + 62)
        assert await breakers.breaker(VENDOR) == BreakerRecord(T0 + 62, 0.0)
        await breakers.reset(VENDOR)
        assert await breakers.breaker(VENDOR) is None
        assert await breakers.take_probe(VENDOR, T0 + 100, T0 + 130) == (False, None)
