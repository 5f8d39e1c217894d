"""worker.store.postgres.Batcher: the calls of one loop turn as one statement, without a database."""

from __future__ import annotations

import asyncio

import pytest

from worker.store import postgres
from worker.store.postgres import Batcher


class Statements:
    """Records each batch it is sent; answers each item with (item, batch number)."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[str, int]]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.fail: Exception | None = None

    async def send(self, items: list[tuple[str, int]]) -> list[tuple[tuple[str, int], int]]:
        self.batches.append(list(items))
        number = len(self.batches)
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        return [(item, number) for item in items]


def _key(item: tuple[str, int]) -> str:
    return item[0]


async def test_the_calls_of_one_turn_are_sent_on_the_next_turn_as_one_batch() -> None:
    statements = Statements()
    batcher = Batcher(statements.send, key=_key)
    futures = [batcher.submit((f"k{n}", n)) for n in range(3)]
    assert statements.batches == []
    # One turn later the statement is on its way: no second hop through a callback that
    # starts a task (a loop turn under load is milliseconds, paid on every store call).
    await asyncio.sleep(0)
    assert statements.batches == [[("k0", 0), ("k1", 1), ("k2", 2)]]
    assert await asyncio.gather(*futures) == [(("k0", 0), 1), (("k1", 1), 1), (("k2", 2), 1)]


async def test_a_key_submitted_twice_waits_for_the_batch_after_the_first() -> None:
    statements = Statements()
    batcher = Batcher(statements.send, key=_key)
    first = batcher.submit(("same", 1))
    other = batcher.submit(("other", 2))
    second = batcher.submit(("same", 3))
    assert await second == (("same", 3), 2)
    assert first.result() == (("same", 1), 1)
    assert other.result() == (("other", 2), 1)
    assert statements.batches == [[("same", 1), ("other", 2)], [("same", 3)]]


async def test_a_failed_statement_fails_every_call_of_its_batch_and_only_those() -> None:
    statements = Statements()
    statements.release.clear()
    batcher = Batcher(statements.send, key=_key)
    failed = [batcher.submit(("a", 1)), batcher.submit(("b", 2))]
    later = batcher.submit(("a", 3))  # same key: the next batch
    await asyncio.sleep(0)
    statements.fail = ConnectionError("lost")
    statements.release.set()
    for future in failed:
        with pytest.raises(ConnectionError):
            await future
    statements.fail = None
    assert await later == (("a", 3), 2)


async def test_a_call_cancelled_before_its_batch_left_is_not_sent() -> None:
    statements = Statements()
    batcher = Batcher(statements.send)
    kept = batcher.submit(("kept", 1))
    batcher.submit(("cancelled", 2)).cancel()
    assert await kept == (("kept", 1), 1)
    assert statements.batches == [[("kept", 1)]]


async def test_a_turn_with_more_calls_than_a_batch_holds_sends_the_rest_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(postgres, "BATCH_MAX", 2)
    statements = Statements()
    batcher = Batcher(statements.send)
    futures = [batcher.submit((f"k{n}", n)) for n in range(5)]
    await asyncio.gather(*futures)
    assert [len(batch) for batch in statements.batches] == [2, 2, 1]


async def test_wait_sent_returns_once_every_batch_in_flight_is_done() -> None:
    statements = Statements()
    statements.release.clear()
    batcher = Batcher(statements.send)
    future = batcher.submit(("k", 1))
    await asyncio.sleep(0)
    waiting = asyncio.ensure_future(batcher.wait_sent())
    await asyncio.sleep(0)
    assert not waiting.done()
    statements.release.set()
    await waiting
    assert future.done()


async def test_calls_made_while_a_statement_is_out_go_together_in_the_next() -> None:
    """One statement at a time: under load the batches grow instead of statements piling up."""
    statements = Statements()
    statements.release.clear()
    batcher = Batcher(statements.send, key=_key)
    first = batcher.submit(("a", 1))
    await asyncio.sleep(0)
    assert statements.batches == [[("a", 1)]]
    waiting = [batcher.submit(("b", 2))]
    await asyncio.sleep(0)
    waiting.append(batcher.submit(("c", 3)))
    await asyncio.sleep(0)
    assert statements.batches == [[("a", 1)]]  # nothing else sent while the first is out
    statements.release.set()
    assert await first == (("a", 1), 1)
    assert await asyncio.gather(*waiting) == [(("b", 2), 2), (("c", 3), 2)]
    assert statements.batches == [[("a", 1)], [("b", 2), ("c", 3)]]


async def test_a_call_made_as_the_last_batch_ends_is_still_sent() -> None:
    """A call made in the turn the flushing task ends (before its done callbacks ran) starts a batch."""
    statements = Statements()
    batcher = Batcher(statements.send)
    later: list[asyncio.Future[tuple[tuple[str, int], int]]] = []

    def submit_more(_: object) -> None:
        later.append(batcher.submit(("late", 2)))

    first = batcher.submit(("first", 1))
    first.add_done_callback(submit_more)  # runs right after the answer, before the task's own callbacks
    assert await first == (("first", 1), 1)
    assert await asyncio.wait_for(later[0], timeout=5) == (("late", 2), 2)


async def test_an_error_of_the_batcher_itself_fails_the_waiting_calls_and_the_next_call_is_sent() -> None:
    """A failure outside the statement (here the key function) fails the calls it stranded, once;
    the batcher is not left flushing, so the next call goes out."""
    statements = Statements()

    def key(item: tuple[str, int]) -> str:
        if item[0] == "bad":
            raise ValueError("no key")
        return item[0]

    batcher = Batcher(statements.send, key=key)
    stranded = [batcher.submit(("bad", 1)), batcher.submit(("other", 2))]
    for future in stranded:
        with pytest.raises(ValueError, match="no key"):
            await asyncio.wait_for(future, timeout=5)
    assert statements.batches == []
    assert await asyncio.wait_for(batcher.submit(("good", 3)), timeout=5) == (("good", 3), 1)
