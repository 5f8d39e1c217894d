"""Many calls in one event-loop turn (what the batching backends send together) give each caller its own answer.

Run on every backend: the batch must be invisible in results. The PostgreSQL-only
tests at the end check that the calls were in fact sent as a few statements.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.store.conftest import POSTGRES_URL, OpenBackend, clean_postgres, wait_past
from worker.store import ClaimStatus, Stores, open_stores
from worker.store import postgres as pg

A, FP = "acct", "fp-1"
T0 = 1_700_000_000.0
LEASE = 30.0


class TestClaimBatch:
    async def test_many_keys_in_one_turn_are_acquired_with_their_attempts(self, stores: Stores) -> None:
        """200 new keys claimed in one turn are all ACQUIRED with one attempt; after a retry each has two."""
        store = stores.idempotency
        keys = [f"cmd-{n}" for n in range(200)]
        first = await asyncio.gather(*(store.claim(A, key, FP, T0, LEASE) for key in keys))
        assert [(c.status, c.attempts, c.lease_until) for c in first] == [
            (ClaimStatus.ACQUIRED, 1, T0 + LEASE)
        ] * 200
        await asyncio.gather(*(store.release(A, key, {"key": key}) for key in keys))
        again = await asyncio.gather(*(store.claim(A, key, FP, T0 + 5, LEASE) for key in keys))
        assert [(c.status, c.attempts, c.first_attempt_at) for c in again] == [
            (ClaimStatus.ACQUIRED, 2, T0)
        ] * 200
        assert [c.state for c in again] == [{"key": key} for key in keys]

    async def test_times_come_back_exactly(self, stores: Stores) -> None:
        """Times of claims sent together are stored to the last bit: a take-over naming the lease seen works."""
        store = stores.idempotency
        nows = [1_764_638_783.123_456_7 + n / 3 for n in range(20)] + [0.1 + 0.2, 1e-7 + 3]
        claims = await asyncio.gather(
            *(store.claim(A, f"t-{n}", FP, now, 1 / 3) for n, now in enumerate(nows))
        )
        assert [(c.first_attempt_at, c.attempt_started_at, c.lease_until) for c in claims] == [
            (now, now, now + 1 / 3) for now in nows
        ]
        later = nows[0] + 10
        taken = await store.take_over(A, "t-0", nows[0] + 1 / 3, later, LEASE)
        assert (taken.status, taken.attempts) == (ClaimStatus.ACQUIRED, 2)

    async def test_expired_records_reclaimed_among_new_ones(self, open_backend: OpenBackend) -> None:
        """Records past their retention, claimed in one turn with new keys, start afresh like the new ones."""
        store = (await open_backend(retention_seconds=0.3)).idempotency
        await store.complete(A, "old-done", FP, b'{"old":1}', time.time())
        await store.claim(A, "old-pending", FP, time.time(), LEASE)
        await store.release(A, "old-pending", {"x": 1})
        await wait_past(time.time() + 0.3 + 0.05)
        now = time.time()
        keys = ["new-1", "old-done", "new-2", "old-pending"]
        claims = await asyncio.gather(*(store.claim(A, key, "other-fp", now, LEASE) for key in keys))
        assert [
            (c.status, c.attempts, c.first_attempt_at, c.attempt_started_at, c.state, c.event) for c in claims
        ] == [(ClaimStatus.ACQUIRED, 1, now, now, None, None)] * 4
        again = await asyncio.gather(*(store.claim(A, key, "other-fp", now + 0.1, LEASE) for key in keys))
        assert [c.status for c in again] == [ClaimStatus.BUSY] * 4

    async def test_more_calls_in_one_turn_than_one_statement_takes(self, stores: Stores) -> None:
        """1,200 claims in one turn (more than a batch holds) are all answered, each key ACQUIRED once."""
        keys = [f"cmd-{n}" for n in range(1200)]
        claims = await asyncio.gather(*(stores.idempotency.claim(A, key, FP, T0, LEASE) for key in keys))
        assert [c.status for c in claims] == [ClaimStatus.ACQUIRED] * 1200
        again = await asyncio.gather(*(stores.idempotency.claim(A, key, FP, T0 + 1, LEASE) for key in keys))
        assert [c.status for c in again] == [ClaimStatus.BUSY] * 1200

    async def test_same_key_twice_in_one_turn(self, stores: Stores) -> None:
        """The same key claimed twice in one turn, among others: one ACQUIRED, the other BUSY."""
        store = stores.idempotency
        claims = await asyncio.gather(
            store.claim(A, "other-1", FP, T0, LEASE),
            store.claim(A, "twice", FP, T0, LEASE),
            store.claim(A, "other-2", FP, T0, LEASE),
            store.claim(A, "twice", FP, T0, LEASE),
        )
        assert claims[0].status is claims[2].status is ClaimStatus.ACQUIRED
        assert sorted(c.status.value for c in (claims[1], claims[3])) == ["acquired", "busy"]

    async def test_mixed_records_in_one_turn(self, stores: Stores) -> None:
        """New, done, conflicting, pending, waiting, busy and expired keys in one turn each get their own answer."""
        store = stores.idempotency
        for key in ("done", "conflict", "pending", "waiting", "busy"):
            await store.claim(A, key, FP, T0, LEASE)
        await store.claim(A, "expired", FP, T0 - 2 * LEASE, LEASE)
        await store.complete(A, "done", FP, b'{"done":1}', T0)
        await store.release(A, "pending", {"retry": 1})
        await store.release(A, "waiting", {"step": 2}, waiting=True)

        keys = ["new", "done", "conflict", "pending", "waiting", "busy", "expired"]
        fingerprints = {"conflict": "other"}
        now = T0 + 1
        claims = dict(
            zip(
                keys,
                await asyncio.gather(
                    *(store.claim(A, key, fingerprints.get(key, FP), now, LEASE) for key in keys)
                ),
                strict=True,
            )
        )
        assert (claims["new"].status, claims["new"].attempts, claims["new"].first_attempt_at) == (
            ClaimStatus.ACQUIRED,
            1,
            now,
        )
        assert (claims["done"].status, claims["done"].event) == (ClaimStatus.DONE, b'{"done":1}')
        assert (claims["conflict"].status, claims["conflict"].event) == (ClaimStatus.CONFLICT, None)
        pending = claims["pending"]
        assert (pending.status, pending.attempts, pending.state) == (ClaimStatus.ACQUIRED, 2, {"retry": 1})
        waiting = claims["waiting"]
        assert (waiting.status, waiting.attempts, waiting.state) == (ClaimStatus.ACQUIRED, 1, {"step": 2})
        assert waiting.lease_until == now + LEASE
        busy = claims["busy"]
        assert (busy.status, busy.lease_until, busy.attempt_started_at) == (ClaimStatus.BUSY, T0 + LEASE, T0)
        expired = claims["expired"]
        assert (expired.status, expired.lease_until) == (ClaimStatus.EXPIRED, T0 - LEASE)


class TestCompleteBatch:
    async def test_many_completes_in_one_turn(self, stores: Stores) -> None:
        """200 completes in one turn each store and return their own event; a claim then finds it DONE."""
        store = stores.idempotency
        keys = [f"cmd-{n}" for n in range(200)]
        await asyncio.gather(*(store.claim(A, key, FP, T0, LEASE) for key in keys[:100]))
        stored = await asyncio.gather(*(store.complete(A, key, FP, key.encode(), T0 + 1) for key in keys))
        assert stored == [key.encode() for key in keys]
        claims = await asyncio.gather(*(store.claim(A, key, FP, T0 + 2, LEASE) for key in keys))
        assert [(c.status, c.event) for c in claims] == [(ClaimStatus.DONE, key.encode()) for key in keys]

    async def test_first_event_wins_within_and_across_turns(self, stores: Stores) -> None:
        """A key completed twice in one turn, and one already done, both return the first stored event."""
        store = stores.idempotency
        await store.complete(A, "earlier", FP, b"first", T0)
        results = await asyncio.gather(
            store.complete(A, "twice", FP, b"one", T0),
            store.complete(A, "earlier", FP, b"second", T0 + 1),
            store.complete(A, "twice", FP, b"two", T0),
            store.complete(A, "fresh", FP, b"fresh", T0),
        )
        assert results[0] == results[2] in (b"one", b"two")
        assert results[1] == b"first"
        assert results[3] == b"fresh"
        assert (await store.claim(A, "twice", FP, T0 + 2, LEASE)).event == results[0]


class TestContainsBatch:
    async def test_contains_for_many_numbers_in_one_turn(self, stores: Stores) -> None:
        """100 lookups in one turn each answer for their own (account, number), repeats included."""
        numbers = [f"+1888555{n:04d}" for n in range(100)]
        for number in numbers[::2]:
            await stores.suppressions.add(A, number, reason="STOP", source="test", now=T0)
        await stores.suppressions.add("other", numbers[1], reason="STOP", source="test", now=T0)
        asks = [(A, number) for number in numbers] + [
            ("other", numbers[1]),
            ("other", numbers[0]),
            (A, numbers[0]),
        ]
        found = await asyncio.gather(*(stores.suppressions.contains(a, n) for a, n in asks))
        assert found == [n % 2 == 0 for n in range(100)] + [True, False, True]


@pytest.mark.integration
class TestPostgresBatching:
    @pytest.fixture
    async def pg_stores(self) -> Any:
        await clean_postgres()
        stores = await open_stores(POSTGRES_URL, retention_seconds=3600)
        yield stores
        await stores.close()

    @staticmethod
    def count_calls(db: pg.Database, monkeypatch: pytest.MonkeyPatch) -> list[str]:
        calls: list[str] = []
        real = db.call

        async def call(method: str, sql: str, *args: Any) -> Any:
            calls.append(sql)
            return await real(method, sql, *args)

        monkeypatch.setattr(db, "call", call)
        return calls

    async def test_one_turn_is_one_statement_per_kind(
        self, pg_stores: Stores, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """200 claims, then 200 completes, then 100 lookups, each in one turn, are sent as one statement each."""
        store = pg_stores.idempotency
        assert isinstance(store, pg.PostgresIdempotencyStore)
        calls = self.count_calls(store.db, monkeypatch)
        keys = [f"cmd-{n}" for n in range(200)]
        await asyncio.gather(*(store.claim(A, key, FP, T0, LEASE) for key in keys))
        await asyncio.gather(*(store.complete(A, key, FP, b"{}", T0) for key in keys))
        await asyncio.gather(*(pg_stores.suppressions.contains(A, f"+1888555{n:04d}") for n in range(100)))
        assert calls == [pg._CLAIM_MANY, pg._COMPLETE_MANY, pg._CONTAINS_MANY]

    async def test_completes_not_all_accounted_for_are_asked_again(
        self, pg_stores: Stores, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """When a batch's answer does not account for every key (another worker completed one mid-statement),
        the keys are asked again one by one, and each call still gets the event that is stored."""
        store = pg_stores.idempotency
        assert isinstance(store, pg.PostgresIdempotencyStore)
        await store.complete(A, "cmd-3", FP, b"earlier", T0)
        real = store.db.call

        async def one_short(method: str, sql: str, *args: Any) -> Any:
            rows = await real(method, sql, *args)
            if sql != pg._COMPLETE_MANY:
                return rows
            return [(None, None, None, row[3] - 1) if row[0] is None else tuple(row) for row in rows]

        monkeypatch.setattr(store.db, "call", one_short)
        stored = await asyncio.gather(
            *(store.complete(A, f"cmd-{n}", FP, f"e{n}".encode(), T0) for n in range(6))
        )
        assert stored == [b"e0", b"e1", b"e2", b"earlier", b"e4", b"e5"]

    async def test_failed_batch_fails_every_call(
        self, pg_stores: Stores, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """When the store is unavailable, every claim of the batch raises StoreUnavailable, and the next works."""
        store = pg_stores.idempotency
        assert isinstance(store, pg.PostgresIdempotencyStore)
        real = store.db.call

        async def down(method: str, sql: str, *args: Any) -> Any:
            raise pg.StoreUnavailable("down")

        monkeypatch.setattr(store.db, "call", down)
        results = await asyncio.gather(
            *(store.claim(A, f"cmd-{n}", FP, T0, LEASE) for n in range(10)), return_exceptions=True
        )
        assert all(isinstance(result, pg.StoreUnavailable) for result in results)
        monkeypatch.setattr(store.db, "call", real)
        claims = await asyncio.gather(*(store.claim(A, f"cmd-{n}", FP, T0, LEASE) for n in range(10)))
        assert all(claim.status is ClaimStatus.ACQUIRED for claim in claims)

    async def test_cancelled_caller_leaves_the_others_answered(self, pg_stores: Stores) -> None:
        """A claim cancelled before its batch is sent is not sent; the other claims of the turn are answered."""
        store = pg_stores.idempotency
        tasks = [asyncio.create_task(store.claim(A, f"cmd-{n}", FP, T0, LEASE)) for n in range(5)]
        await asyncio.sleep(0)  # each task submitted its claim; the batch goes out on the next turn
        tasks[2].cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(results.pop(2), asyncio.CancelledError)
        assert [getattr(result, "status", result) for result in results] == [ClaimStatus.ACQUIRED] * 4
        assert (await store.claim(A, "cmd-2", FP, T0, LEASE)).status is ClaimStatus.ACQUIRED
