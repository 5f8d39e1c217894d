"""The store contract, the same for every backend (SQLite, Redis, PostgreSQL).

Times passed as ``now`` are arbitrary except where a record or key must
expire: Redis expires them by its own clock, so those tests use the real one.
"""

from __future__ import annotations

import asyncio
import time

from tests.store.conftest import OpenBackend, wait_past
from worker.store import AsksAhead, ClaimStatus, Stores

A, ID, FP = "acct", "cmd-1", "fp-1"
T0 = 1_700_000_000.0
LEASE = 30.0


class TestClaim:
    async def test_first_claim_acquires(self, stores: Stores) -> None:
        """A new key is acquired with one attempt, started now, leased until now + lease, no state."""
        claim = await stores.idempotency.claim(A, ID, FP, T0, LEASE)
        assert claim.status is ClaimStatus.ACQUIRED
        assert (claim.attempts, claim.first_attempt_at, claim.attempt_started_at) == (1, T0, T0)
        assert claim.lease_until == T0 + LEASE
        assert claim.state is None and claim.event is None

    async def test_live_lease_is_busy(self, stores: Stores) -> None:
        """While the lease runs, another claim is BUSY and says until when."""
        await stores.idempotency.claim(A, ID, FP, T0, LEASE)
        claim = await stores.idempotency.claim(A, ID, FP, T0 + 1, LEASE)
        assert claim.status is ClaimStatus.BUSY
        assert (claim.attempts, claim.lease_until, claim.attempt_started_at) == (1, T0 + LEASE, T0)

    async def test_lapsed_lease_is_expired(self, stores: Stores) -> None:
        """After the lease with no outcome, a claim reports EXPIRED with the lease and start time seen."""
        await stores.idempotency.claim(A, ID, FP, T0, LEASE)
        claim = await stores.idempotency.claim(A, ID, FP, T0 + LEASE + 1, LEASE)
        assert claim.status is ClaimStatus.EXPIRED
        assert (claim.attempts, claim.attempt_started_at, claim.lease_until) == (1, T0, T0 + LEASE)

    async def test_expired_claim_carries_the_continuation_state(self, stores: Stores) -> None:
        """A continuation whose worker died mid-step reports its state with EXPIRED."""
        store = stores.idempotency
        await store.claim(A, ID, FP, T0, LEASE)
        await store.release(A, ID, {"step": 2}, waiting=True)
        await store.claim(A, ID, FP, T0 + 1, LEASE)
        claim = await store.claim(A, ID, FP, T0 + 1 + LEASE + 1, LEASE)
        assert claim.status is ClaimStatus.EXPIRED
        assert claim.state == {"step": 2}

    async def test_other_fingerprint_conflicts(self, stores: Stores) -> None:
        """The same id with a different fingerprint is a CONFLICT, running or done."""
        store = stores.idempotency
        await store.claim(A, ID, FP, T0, LEASE)
        assert (await store.claim(A, ID, "other", T0 + 1, LEASE)).status is ClaimStatus.CONFLICT
        await store.complete(A, ID, FP, b'{"e":1}', T0 + 2)
        conflict = await store.claim(A, ID, "other", T0 + 3, LEASE)
        assert conflict.status is ClaimStatus.CONFLICT
        assert conflict.event is None

    async def test_keys_are_per_account(self, stores: Stores) -> None:
        """The same command id in two accounts is two records."""
        await stores.idempotency.claim(A, ID, FP, T0, LEASE)
        claim = await stores.idempotency.claim("other-account", ID, "other", T0, LEASE)
        assert claim.status is ClaimStatus.ACQUIRED

    async def test_concurrent_claims_acquire_once(self, stores: Stores) -> None:
        """Many workers claiming one new key at once: exactly one ACQUIRED, the rest BUSY."""
        claims = await asyncio.gather(*(stores.idempotency.claim(A, ID, FP, T0, LEASE) for _ in range(32)))
        statuses = [claim.status for claim in claims]
        assert statuses.count(ClaimStatus.ACQUIRED) == 1
        assert statuses.count(ClaimStatus.BUSY) == 31

    async def test_concurrent_claims_of_a_pending_record_acquire_once(self, stores: Stores) -> None:
        """Many redeliveries of a command whose retry is due: exactly one takes the attempt."""
        store = stores.idempotency
        await store.claim(A, ID, FP, T0, LEASE)
        await store.release(A, ID)
        claims = await asyncio.gather(*(store.claim(A, ID, FP, T0 + 5, LEASE) for _ in range(32)))
        acquired = [claim for claim in claims if claim.status is ClaimStatus.ACQUIRED]
        assert len(acquired) == 1
        assert acquired[0].attempts == 2
        assert {claim.status for claim in claims} == {ClaimStatus.ACQUIRED, ClaimStatus.BUSY}

    async def test_many_keys_at_once(self, stores: Stores) -> None:
        """Hundreds of different keys claimed concurrently are each acquired once."""
        claims = await asyncio.gather(
            *(stores.idempotency.claim(A, f"cmd-{n}", FP, T0, LEASE) for n in range(300))
        )
        assert all(claim.status is ClaimStatus.ACQUIRED for claim in claims)


class TestTakeOver:
    async def test_take_over_with_the_seen_lease(self, stores: Stores) -> None:
        """Taking over the lease seen as expired counts an attempt and starts a new lease."""
        store = stores.idempotency
        await store.claim(A, ID, FP, T0, LEASE)
        now = T0 + LEASE + 1
        expired = await store.claim(A, ID, FP, now, LEASE)
        claim = await store.take_over(A, ID, expired.lease_until or 0, now, LEASE)
        assert claim.status is ClaimStatus.ACQUIRED
        assert (claim.attempts, claim.first_attempt_at, claim.attempt_started_at) == (2, T0, now)
        assert claim.lease_until == now + LEASE
        assert (await store.claim(A, ID, FP, now + 1, LEASE)).status is ClaimStatus.BUSY

    async def test_take_over_keeps_the_state(self, stores: Stores) -> None:
        """A taken-over continuation resumes with its stored state."""
        store = stores.idempotency
        await store.claim(A, ID, FP, T0, LEASE)
        await store.release(A, ID, {"job": "j-1"}, waiting=True)
        await store.claim(A, ID, FP, T0 + 1, LEASE)
        claim = await store.take_over(A, ID, T0 + 1 + LEASE, T0 + 100, LEASE)
        assert claim.status is ClaimStatus.ACQUIRED
        assert claim.state == {"job": "j-1"}

    async def test_take_over_with_another_lease_is_busy(self, stores: Stores) -> None:
        """A take-over naming a lease that is not the current one fails."""
        store = stores.idempotency
        await store.claim(A, ID, FP, T0, LEASE)
        assert (await store.take_over(A, ID, T0 + 999, T0 + LEASE + 1, LEASE)).status is ClaimStatus.BUSY

    async def test_take_over_of_a_finished_or_missing_record_is_busy(self, stores: Stores) -> None:
        """Only a running record can be taken over."""
        store = stores.idempotency
        assert (await store.take_over(A, "missing", T0, T0 + 1, LEASE)).status is ClaimStatus.BUSY
        await store.claim(A, ID, FP, T0, LEASE)
        await store.complete(A, ID, FP, b"{}", T0 + 1)
        assert (await store.take_over(A, ID, T0 + LEASE, T0 + LEASE + 1, LEASE)).status is ClaimStatus.BUSY

    async def test_concurrent_take_overs_acquire_once(self, stores: Stores) -> None:
        """Workers racing to take over one expired lease: exactly one ACQUIRED."""
        store = stores.idempotency
        await store.claim(A, ID, FP, T0, LEASE)
        now = T0 + LEASE + 1
        claims = await asyncio.gather(*(store.take_over(A, ID, T0 + LEASE, now, LEASE) for _ in range(16)))
        statuses = [claim.status for claim in claims]
        assert statuses.count(ClaimStatus.ACQUIRED) == 1
        assert statuses.count(ClaimStatus.BUSY) == 15


class TestRelease:
    async def test_retry_counts_an_attempt(self, stores: Stores) -> None:
        """release() (a retry) makes the next claim ACQUIRED with one more attempt, same first attempt."""
        store = stores.idempotency
        await store.claim(A, ID, FP, T0, LEASE)
        await store.release(A, ID)
        claim = await store.claim(A, ID, FP, T0 + 5, LEASE)
        assert claim.status is ClaimStatus.ACQUIRED
        assert (claim.attempts, claim.first_attempt_at, claim.attempt_started_at) == (2, T0, T0 + 5)
        assert claim.lease_until == T0 + 5 + LEASE

    async def test_retry_keeps_the_state(self, stores: Stores) -> None:
        """A retry released with state gets the state back at the next claim."""
        store = stores.idempotency
        await store.claim(A, ID, FP, T0, LEASE)
        await store.release(A, ID, {"cursor": "abc"})
        assert (await store.claim(A, ID, FP, T0 + 5, LEASE)).state == {"cursor": "abc"}

    async def test_continuation_counts_no_attempt(self, stores: Stores) -> None:
        """release(waiting=True) resumes at the next claim with the same attempt count and the state."""
        store = stores.idempotency
        await store.claim(A, ID, FP, T0, LEASE)
        state = {
            "job_id": "j-9",
            "polls": 3,
            "nested": {"list": [1, 2.5, None, "x"], "ok": True},
            "ünï": "çødé",
        }
        await store.release(A, ID, state, waiting=True)
        claim = await store.claim(A, ID, FP, T0 + 5, LEASE)
        assert claim.status is ClaimStatus.ACQUIRED
        assert claim.attempts == 1
        assert claim.state == state
        await store.release(A, ID, {"polls": 4}, waiting=True)
        assert (await store.claim(A, ID, FP, T0 + 10, LEASE)).state == {"polls": 4}

    async def test_release_without_state_clears_it(self, stores: Stores) -> None:
        """Releasing with no state drops the state stored before."""
        store = stores.idempotency
        await store.claim(A, ID, FP, T0, LEASE)
        await store.release(A, ID, {"x": 1}, waiting=True)
        await store.claim(A, ID, FP, T0 + 1, LEASE)
        await store.release(A, ID)
        assert (await store.claim(A, ID, FP, T0 + 2, LEASE)).state is None

    async def test_release_of_a_finished_record_changes_nothing(self, stores: Stores) -> None:
        """A late release after the outcome is stored leaves the record done."""
        store = stores.idempotency
        await store.claim(A, ID, FP, T0, LEASE)
        await store.complete(A, ID, FP, b"first", T0 + 1)
        await store.release(A, ID, {"x": 1})
        claim = await store.claim(A, ID, FP, T0 + 2, LEASE)
        assert claim.status is ClaimStatus.DONE
        assert claim.event == b"first"

    async def test_release_of_a_taken_over_attempt_changes_nothing(self, stores: Stores) -> None:
        """A worker whose lapsed lease was taken over cannot free the attempt that took it over."""
        store = stores.idempotency
        first = await store.claim(A, ID, FP, T0, LEASE)
        now = T0 + LEASE + 1
        await store.take_over(A, ID, T0 + LEASE, now, LEASE)
        await store.release(A, ID, started=first.attempt_started_at)
        assert (await store.claim(A, ID, FP, now + 1, LEASE)).status is ClaimStatus.BUSY
        await store.release(A, ID, started=now)  # the attempt's own release still works
        assert (await store.claim(A, ID, FP, now + 2, LEASE)).status is ClaimStatus.ACQUIRED


class TestComplete:
    async def test_done_returns_the_stored_event(self, stores: Stores) -> None:
        """After complete(), a claim is DONE with the event byte for byte and the attempt count."""
        store = stores.idempotency
        event = b'{"status":"succeeded","n":"\xc3\xa9"}'
        await store.claim(A, ID, FP, T0, LEASE)
        await store.release(A, ID)
        await store.claim(A, ID, FP, T0 + 1, LEASE)
        assert await store.complete(A, ID, FP, event, T0 + 2) == event
        claim = await store.claim(A, ID, FP, T0 + 3, LEASE)
        assert claim.status is ClaimStatus.DONE
        assert claim.event == event
        assert (claim.attempts, claim.first_attempt_at) == (2, T0)

    async def test_replays_change_nothing(self, stores: Stores) -> None:
        """Replays of a finished command, alone and among new ones, answer DONE and leave the record as it was."""
        store, controls = stores.idempotency, stores.controls
        assert controls is not None
        await store.claim(A, ID, FP, T0, LEASE)
        await store.complete(A, ID, FP, b'{"e":1}', T0 + 1)
        before = await controls.peek(A, ID)
        alone = await store.claim(A, ID, FP, T0 + 2, LEASE)
        mixed = await asyncio.gather(
            store.claim(A, "new-1", FP, T0 + 3, LEASE),
            store.claim(A, ID, FP, T0 + 3, LEASE),
            store.claim(A, "new-2", FP, T0 + 3, LEASE),
        )
        assert (alone.status, alone.event, alone.attempts, alone.first_attempt_at) == (
            ClaimStatus.DONE,
            b'{"e":1}',
            1,
            T0,
        )
        assert [c.status for c in mixed] == [ClaimStatus.ACQUIRED, ClaimStatus.DONE, ClaimStatus.ACQUIRED]
        assert mixed[1].event == b'{"e":1}'
        assert await controls.peek(A, ID) == before

    async def test_first_event_wins(self, stores: Stores) -> None:
        """A second complete() keeps and returns the first event: one command, one outcome."""
        store = stores.idempotency
        await store.claim(A, ID, FP, T0, LEASE)
        assert await store.complete(A, ID, FP, b"first", T0 + 1) == b"first"
        assert await store.complete(A, ID, FP, b"second", T0 + 2) == b"first"
        assert (await store.claim(A, ID, FP, T0 + 3, LEASE)).event == b"first"

    async def test_concurrent_completes_agree(self, stores: Stores) -> None:
        """Workers completing one command at once all get the same stored event back."""
        store = stores.idempotency
        await store.claim(A, ID, FP, T0, LEASE)
        events = [f"event-{n}".encode() for n in range(16)]
        stored = await asyncio.gather(*(store.complete(A, ID, FP, event, T0 + 1) for event in events))
        assert len(set(stored)) == 1
        assert stored[0] in events
        assert (await store.claim(A, ID, FP, T0 + 2, LEASE)).event == stored[0]

    async def test_complete_without_a_claim_stores_the_event(self, stores: Stores) -> None:
        """complete() on an unknown key stores it (an outcome decided before any claim)."""
        store = stores.idempotency
        assert await store.complete(A, ID, FP, b"ev", T0) == b"ev"
        claim = await store.claim(A, ID, FP, T0 + 1, LEASE)
        assert (claim.status, claim.event) == (ClaimStatus.DONE, b"ev")

    async def test_expired_lease_can_still_complete(self, stores: Stores) -> None:
        """An outcome stored after the lease ran out still ends the command."""
        store = stores.idempotency
        await store.claim(A, ID, FP, T0, LEASE)
        assert await store.complete(A, ID, FP, b"late", T0 + LEASE + 10) == b"late"
        assert (await store.claim(A, ID, FP, T0 + LEASE + 11, LEASE)).status is ClaimStatus.DONE


class TestRetention:
    async def test_expired_record_starts_fresh(self, open_backend: OpenBackend) -> None:
        """Past the retention a finished record is forgotten: a claim acquires with one attempt."""
        store = (await open_backend(retention_seconds=0.3)).idempotency
        await store.claim(A, ID, FP, time.time(), LEASE)
        await store.complete(A, ID, FP, b"old", time.time())
        done_at = time.time()
        assert (await store.claim(A, ID, FP, time.time(), LEASE)).status is ClaimStatus.DONE
        await wait_past(done_at + 0.3 + 0.05)
        now = time.time()
        claim = await store.claim(A, ID, "new-fingerprint", now, LEASE)
        assert claim.status is ClaimStatus.ACQUIRED
        assert (claim.attempts, claim.first_attempt_at, claim.event, claim.state) == (1, now, None, None)

    async def test_prune_drops_only_expired_records(self, open_backend: OpenBackend, backend: str) -> None:
        """prune(now) removes records past retention and keeps the others (Redis expires them itself)."""
        store = (await open_backend(retention_seconds=0.3)).idempotency
        await store.complete(A, "old", FP, b"old", time.time())
        written = time.time()
        await wait_past(written + 0.3 + 0.05)
        await store.complete(A, "new", FP, b"new", time.time())
        removed = await store.prune(time.time())
        assert removed == (0 if backend == "redis" else 1)
        assert await store.forget(A, "old") is False
        assert await store.forget(A, "new") is True

    async def test_prune_with_nothing_expired(self, stores: Stores) -> None:
        """prune() before anything expired removes nothing."""
        await stores.idempotency.complete(A, ID, FP, b"e", time.time())
        assert await stores.idempotency.prune(time.time()) == 0
        assert (await stores.idempotency.claim(A, ID, FP, time.time(), LEASE)).status is ClaimStatus.DONE


class TestForget:
    async def test_forget_allows_a_fresh_run(self, stores: Stores) -> None:
        """forget() drops a finished record; the same id then runs again from attempt one."""
        store = stores.idempotency
        await store.claim(A, ID, FP, T0, LEASE)
        await store.complete(A, ID, FP, b"e", T0 + 1)
        assert await store.forget(A, ID) is True
        claim = await store.claim(A, ID, FP, T0 + 2, LEASE)
        assert (claim.status, claim.attempts) == (ClaimStatus.ACQUIRED, 1)

    async def test_forget_unknown_is_false(self, stores: Stores) -> None:
        """forget() of a key never seen reports False."""
        assert await stores.idempotency.forget(A, "never") is False


class TestDurability:
    async def test_records_survive_a_reopen(self, open_backend: OpenBackend) -> None:
        """A finished command and a running one are still known after the store is closed and reopened."""
        first = await open_backend()
        await first.idempotency.claim(A, "done", FP, T0, LEASE)
        await first.idempotency.complete(A, "done", FP, b"outcome", T0 + 1)
        await first.idempotency.claim(A, "running", FP, T0, LEASE)
        await first.close()
        again = await open_backend()
        done = await again.idempotency.claim(A, "done", FP, T0 + 2, LEASE)
        assert (done.status, done.event) == (ClaimStatus.DONE, b"outcome")
        assert (await again.idempotency.claim(A, "running", FP, T0 + 2, LEASE)).status is ClaimStatus.BUSY


class TestSuppressions:
    async def test_add_contains_remove(self, stores: Stores) -> None:
        """An added number is suppressed for its account only, until removed."""
        opt_outs = stores.suppressions
        await opt_outs.add(A, "+18885551234", reason="STOP", source="test", now=T0)
        assert await opt_outs.contains(A, "+18885551234")
        assert not await opt_outs.contains("other", "+18885551234")
        assert not await opt_outs.contains(A, "+18885550000")
        assert await opt_outs.remove(A, "+18885551234") is True
        assert not await opt_outs.contains(A, "+18885551234")
        assert await opt_outs.remove(A, "+18885551234") is False

    async def test_a_lookup_sent_ahead_answers_as_contains(self, stores: Stores) -> None:
        """Every backend sends a lookup ahead (with the claim); several in one turn, one answer each."""
        opt_outs = stores.suppressions
        assert isinstance(opt_outs, AsksAhead)
        await opt_outs.add(A, "+18885551234", reason="STOP", source="test", now=T0)
        answers = [
            opt_outs.contains_soon(A, "+18885551234"),
            opt_outs.contains_soon("other", "+18885551234"),
            opt_outs.contains_soon(A, "+18885550000"),
            opt_outs.contains_soon(A, "+18885551234"),
        ]
        assert [bool(answer) for answer in await asyncio.gather(*answers)] == [True, False, False, True]

    async def test_list_rows_and_order(self, stores: Stores) -> None:
        """list() gives every field, ordered by account then number; list(account) filters."""
        opt_outs = stores.suppressions
        await opt_outs.add("b", "+18885550002", reason="STOP", source="webhook", now=T0 + 2)
        await opt_outs.add("a", "+18885550009", reason="complaint", source="import", now=T0 + 1)
        await opt_outs.add("a", "+18885550001", reason="STOP", source="cli", now=T0)
        everything = await opt_outs.list()
        assert [(row["account"], row["number"]) for row in everything] == [
            ("a", "+18885550001"),
            ("a", "+18885550009"),
            ("b", "+18885550002"),
        ]
        assert everything[0] == {
            "account": "a",
            "number": "+18885550001",
            "reason": "STOP",
            "source": "cli",
            "created_at": T0,
        }
        assert [row["number"] for row in await opt_outs.list("b")] == ["+18885550002"]
        assert await opt_outs.list("nobody") == []

    async def test_add_again_updates_reason_and_source(self, stores: Stores) -> None:
        """Adding a suppressed number again updates reason and source; it stays listed once."""
        opt_outs = stores.suppressions
        await opt_outs.add(A, "+18885551234", reason="STOP", source="webhook", now=T0)
        await opt_outs.add(A, "+18885551234", reason="complaint", source="cli", now=T0 + 60)
        rows = await opt_outs.list(A)
        assert len(rows) == 1
        assert (rows[0]["reason"], rows[0]["source"]) == ("complaint", "cli")

    async def test_add_again_keeps_the_first_time(self, stores: Stores) -> None:
        """The opt-out time is when the number first opted out, not when it was last re-added."""
        opt_outs = stores.suppressions
        await opt_outs.add(A, "+18885551234", reason="STOP", source="webhook", now=T0)
        await opt_outs.add(A, "+18885551234", reason="STOP", source="import", now=T0 + 60)
        assert (await opt_outs.list(A))[0]["created_at"] == T0

    async def test_opt_outs_survive_a_reopen(self, open_backend: OpenBackend) -> None:
        """Opt-outs are still there after the store is closed and reopened."""
        first = await open_backend()
        await first.suppressions.add(A, "+18885551234", reason="STOP", source="test", now=T0)
        await first.close()
        again = await open_backend()
        assert await again.suppressions.contains(A, "+18885551234")


class TestDeduper:
    async def test_first_time_then_seen(self, stores: Stores) -> None:
        """A key is new once; again within its TTL it is a duplicate; other keys are unaffected."""
        now = time.time()
        assert await stores.deduper.first_time("webhook:1", now, 60) is True
        assert await stores.deduper.first_time("webhook:1", now + 1, 60) is False
        assert await stores.deduper.first_time("webhook:2", now + 1, 60) is True

    async def test_new_again_after_the_ttl(self, stores: Stores) -> None:
        """After its TTL a key counts as new again."""
        written = time.time()
        assert await stores.deduper.first_time("webhook:1", written, 0.2) is True
        await wait_past(written + 0.2 + 0.05)
        assert await stores.deduper.first_time("webhook:1", time.time(), 0.2) is True

    async def test_concurrent_first_time_once(self, stores: Stores) -> None:
        """One key seen by many at once is new for exactly one."""
        now = time.time()
        results = await asyncio.gather(*(stores.deduper.first_time("webhook:x", now, 60) for _ in range(32)))
        assert results.count(True) == 1


class TestControls:
    async def test_put_list_remove(self, stores: Stores) -> None:
        """A control is listed until it expires or is removed; putting it again replaces its value."""
        controls = stores.controls
        assert controls is not None
        await controls.put_control("pause:acct:*", {"since": 1.0}, expires_at=T0 + 100)
        await controls.put_control("cancel:acct:cmd-1", {"by": "ops"}, expires_at=T0 + 10)
        assert await controls.controls(T0) == {
            "pause:acct:*": {"since": 1.0},
            "cancel:acct:cmd-1": {"by": "ops"},
        }
        assert await controls.controls(T0 + 50) == {"pause:acct:*": {"since": 1.0}}
        await controls.put_control("pause:acct:*", {"since": 2.0}, expires_at=T0 + 100)
        assert (await controls.controls(T0))["pause:acct:*"] == {"since": 2.0}
        assert await controls.remove_control("pause:acct:*") is True
        assert await controls.remove_control("pause:acct:*") is False
        assert "pause:acct:*" not in await controls.controls(T0)

    async def test_peek(self, stores: Stores) -> None:
        """peek() tells what the store knows of a command: nothing, running, then done with its event."""
        controls, store = stores.controls, stores.idempotency
        assert controls is not None
        assert await controls.peek(A, ID) is None
        await store.claim(A, ID, FP, T0, LEASE)
        running = await controls.peek(A, ID)
        assert running is not None
        assert (running["status"], running["attempts"], running["first_attempt_at"]) == ("running", 1, T0)
        assert running["event"] is None
        await store.complete(A, ID, FP, b'{"status":"succeeded"}', T0 + 1)
        done = await controls.peek(A, ID)
        assert done is not None
        assert (done["status"], done["event"]) == ("done", {"status": "succeeded"})
