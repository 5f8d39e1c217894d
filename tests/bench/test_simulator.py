"""The benchmark's vendor simulator: answers like Pidj's /send, after its latency, only to the right auth."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest

from bench.simulator import RunningSimulator, start_simulator

FORM = {"to_number": "+18885553333", "from_number": "+18885552222", "text_body": "bench"}
AUTH = {"Authorization": "Basic " + base64.b64encode(b"bench-key:bench-token").decode()}


@pytest.fixture(params=["raw", "aiohttp"])
async def simulator(request: pytest.FixtureRequest) -> AsyncIterator[RunningSimulator]:
    running = await start_simulator(latency_ms=40, impl=request.param)
    yield running
    await running.close()


async def test_send_answers_text_sent_after_the_latency(simulator: RunningSimulator) -> None:
    """POST /send with the right Basic auth gets Pidj's success body, and not before the latency passed."""
    async with aiohttp.ClientSession() as session:
        started = time.monotonic()
        async with session.post(simulator.base_url + "/send", data=FORM, headers=AUTH) as answer:
            body = await answer.read()
        elapsed = time.monotonic() - started
    assert answer.status == 200
    assert orjson.loads(body) == {"code": 200, "status": "success", "message": "Text sent."}
    assert elapsed >= 0.040 - 0.002  # a lower bound only: the answer waits on a 40 ms timer
    assert simulator.counters.sent == 1


async def test_the_same_text_twice_counts_as_a_repeat(simulator: RunningSimulator) -> None:
    """A form body already sent once (the bench puts the command id in the text) counts as repeated."""
    async with aiohttp.ClientSession() as session:
        for form in (FORM, {**FORM, "text_body": "other"}, FORM):
            async with session.post(simulator.base_url + "/send", data=form, headers=AUTH) as answer:
                assert answer.status == 200
    assert (simulator.counters.sent, simulator.counters.repeated) == (3, 1)


async def test_wrong_credentials_are_refused(simulator: RunningSimulator) -> None:
    """A wrong token or no Authorization header gets 401 and counts as no text sent."""
    async with aiohttp.ClientSession() as session:
        wrong = {"Authorization": "Basic " + base64.b64encode(b"bench-key:not-the-token").decode()}
        async with session.post(simulator.base_url + "/send", data=FORM, headers=wrong) as answer:
            assert answer.status == 401
        async with session.post(simulator.base_url + "/send", data=FORM) as answer:
            assert answer.status == 401
    assert simulator.counters.sent == 0
    assert simulator.counters.unauthorized == 2


async def test_unknown_route_is_404_and_stats_count_texts(simulator: RunningSimulator) -> None:
    """Other paths are 404; GET /stats reports how many texts were accepted."""
    async with aiohttp.ClientSession() as session:
        async with session.post(simulator.base_url + "/nope", data=FORM, headers=AUTH) as answer:
            assert answer.status == 404
        async with session.post(simulator.base_url + "/send", data=FORM, headers=AUTH) as answer:
            assert answer.status == 200
        async with session.get(f"http://127.0.0.1:{simulator.port}/stats") as answer:
            assert orjson.loads(await answer.read())["sent"] == 1


async def test_raw_server_answers_pipelined_requests_in_order() -> None:
    """Two requests sent back to back on one connection get their answers in request order."""
    running = await start_simulator(latency_ms=20, impl="raw")
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
        token = base64.b64encode(b"bench-key:bench-token").decode()
        send = (
            "POST /api/2020/send HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Basic {token}\r\nContent-Length: 4\r\n\r\nab=c"
        )
        missing = "GET /api/2020/missing HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        writer.write((send + missing).encode())
        await writer.drain()
        first = await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout=5)
        await asyncio.wait_for(reader.readuntil(b'Text sent."}'), timeout=5)
        second = await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout=5)
        writer.close()
        await writer.wait_closed()
    finally:
        await running.close()
    assert first.startswith(b"HTTP/1.1 200")
    assert second.startswith(b"HTTP/1.1 404")
