"""Issue 14 items 5, 7, 8: webhook publish bounded, deep bodies refused, opt-in/opt-out safe and loud."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY

from handlers.pidj.settings import PidjAccount
from handlers.pidj.webhooks import webhook_app
from tests.pidj.conftest import MemoryDeduper, MemorySuppressions
from worker.registry import WebhookContext
from worker.store import Stores, open_stores
from worker.suppressions import Entry, add_entries

SECRET = "security-webhook-secret-0123456789"
NUMBER = "+18005552424"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_DATABASE = "switchboard_pidj_security"


class Publisher:
    """Records events; with ``hang`` set it never returns (a broker that never confirms)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.hang = False

    async def __call__(self, routing_key: str, event: dict[str, Any]) -> None:
        if self.hang:
            await asyncio.Event().wait()
        self.events.append((routing_key, event))


@contextlib.asynccontextmanager
async def serve(
    suppressions: Any, *, publish_timeout: float = 10.0, **account: Any
) -> AsyncIterator[tuple[Any, Publisher]]:
    publisher = Publisher()
    ctx = WebhookContext(
        accounts={
            "default": PidjAccount.model_validate(
                {"account_key": "k", "token": "t", "webhook_secret": SECRET, **account}
            )
        },
        publish=publisher,
        suppressions=suppressions,
        deduper=MemoryDeduper(),
        log=structlog.get_logger("test"),
        publish_timeout_seconds=publish_timeout,
    )
    root = web.Application(client_max_size=1024 * 1024)
    root.add_subapp("/webhooks/pidj/", webhook_app(ctx))
    async with TestClient(TestServer(root)) as client:

        async def post(body: Any, *, raw: bytes | None = None) -> tuple[int, dict[str, Any]]:
            data = raw if raw is not None else orjson.dumps(body)
            headers = {"Content-Type": "application/json"}
            async with client.post(f"/webhooks/pidj/default/{SECRET}", data=data, headers=headers) as answer:
                return answer.status, await answer.json()

        yield post, publisher


# -- item 5 --------------------------------------------------------------------------------
async def test_unconfirmed_publish_answers_503_in_bounded_time_and_forgets_the_claim() -> None:
    """A publish the broker never confirms ends in 503 after the timeout; Pidj's retry is then taken."""
    async with serve(MemorySuppressions(), publish_timeout=0.5) as (post, publisher):
        body = {"event": "Text Received", "text": {"phone_from": NUMBER, "body": "hi"}}
        publisher.hang = True
        status, _ = await asyncio.wait_for(post(body), timeout=5)
        assert status == 503
        publisher.hang = False
        status, answer = await post(body)
        assert (status, answer["status"]) == (200, "accepted"), "the retry must not be taken for a duplicate"
        assert len(publisher.events) == 1


def test_publish_timeout_is_a_setting_of_about_ten_seconds() -> None:
    """SWITCHBOARD_WEBHOOK_PUBLISH_TIMEOUT_SECONDS exists and defaults to 10 s."""
    from worker.config import Settings

    assert Settings.model_fields["webhook_publish_timeout_seconds"].default == 10.0


async def test_body_nested_deeper_than_the_encoder_accepts_is_400() -> None:
    """A body orjson can parse but not encode is refused at parse time (400), not 503 forever."""
    deep = '{"x":' * 300 + "1" + "}" * 300  # orjson reads up to 1024 levels, writes only 254
    raw = ('{"event": "contact-updated", "contact": ' + deep + "}").encode()
    async with serve(MemorySuppressions()) as (post, publisher):
        status, _ = await post(None, raw=raw)
        assert status == 400
        assert publisher.events == []


# -- item 7 --------------------------------------------------------------------------------
async def _postgres_url() -> str:
    admin = await asyncpg.connect(PG_ADMIN)
    try:
        if not await admin.fetchval("SELECT true FROM pg_database WHERE datname = $1", PG_DATABASE):
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                await admin.execute(f'CREATE DATABASE "{PG_DATABASE}"')
    finally:
        await admin.close()
    return f"postgresql://postgres@127.0.0.1:5432/{PG_DATABASE}"


@pytest.fixture(
    params=[
        pytest.param("sqlite"),
        pytest.param("redis", marks=pytest.mark.integration),
        pytest.param("postgres", marks=pytest.mark.integration),
    ]
)
async def stores(request: pytest.FixtureRequest) -> AsyncIterator[Stores]:
    """A real store of each backend (own SQLite file, Redis keys of a unique account, own PG database)."""
    with tempfile.TemporaryDirectory() as tmp:
        url = {
            "sqlite": f"sqlite:///{tmp}/store.sqlite3",
            "redis": "redis://127.0.0.1:6379/13",
            "postgres": await _postgres_url() if request.param == "postgres" else "",
        }[request.param]
        opened = await open_stores(url, retention_seconds=3600)
        try:
            yield opened
        finally:
            await opened.close()


def opt(event: str, number: str) -> dict[str, Any]:
    return {"event": event, "contact": {"id": "co:1", "phone": number}}


async def test_opt_in_keeps_an_operators_entry(stores: Stores) -> None:
    """An operator's entry (with a reason) survives an opt-out then an opt-in webhook for the same number."""
    number = f"+1800555{uuid.uuid4().int % 10000:04d}"
    await stores.suppressions.add("default", number, reason="legal hold", source="cli", now=time.time())
    async with serve(stores.suppressions) as (post, _):
        assert (await post(opt("Opt Out", number)))[0] == 200
        assert (await post(opt("Opt In", number)))[0] == 200
    rows = [r for r in await stores.suppressions.list("default") if r["number"] == number]
    assert [(r["reason"], r["source"]) for r in rows] == [("legal hold", "cli")]
    await stores.suppressions.remove("default", number)


async def test_opt_in_keeps_an_imported_entry(stores: Stores) -> None:
    """An entry from `suppressions import` is not removed by an opt-in webhook."""
    number = f"+1800555{uuid.uuid4().int % 10000:04d}"
    await add_entries(stores.suppressions, [Entry("default", number, "complaint", "import", 1.0)])
    async with serve(stores.suppressions) as (post, publisher):
        assert (await post(opt("opt-in", number)))[0] == 200
        assert await stores.suppressions.contains("default", number)
        assert publisher.events[-1][1]["suppression"] == {"applied": False, "reason": "operator_entry_kept"}
    await stores.suppressions.remove("default", number)


async def test_opt_in_removes_what_an_opt_out_webhook_added(stores: Stores) -> None:
    """The webhook's own entry still comes off with an opt-in (the feature is not just "never remove")."""
    number = f"+1800555{uuid.uuid4().int % 10000:04d}"
    async with serve(stores.suppressions) as (post, _):
        assert (await post(opt("Opt Out", number)))[0] == 200
        assert await stores.suppressions.contains("default", number)
        assert (await post(opt("Opt In", number)))[0] == 200
        assert not await stores.suppressions.contains("default", number)


# -- item 8 --------------------------------------------------------------------------------
def _unmatched() -> float:
    return (
        REGISTRY.get_sample_value("switchboard_webhook_opt_outs_without_number_total", {"vendor": "pidj"})
        or 0.0
    )


async def test_opt_out_without_a_number_is_loud() -> None:
    """No recognised number: counted, logged as an error with the field names seen, flagged on the event."""
    before = _unmatched()
    with structlog.testing.capture_logs() as logs:
        async with serve(MemorySuppressions()) as (post, publisher):
            status, _ = await post({"event": "Opt Out", "subscriber": {"msisdn": NUMBER}})
    assert status == 200
    assert _unmatched() == before + 1
    errors = [line for line in logs if line["event"] == "pidj.webhook.no_number"]
    assert errors and errors[0]["log_level"] == "error"
    assert "subscriber.msisdn" in errors[0]["fields_seen"]
    assert NUMBER not in str(errors[0]), "field names only, never the values"
    event = publisher.events[0][1]
    assert event["suppression"]["applied"] is False
    assert event["suppression"]["reason"] == "no_number"


async def test_number_field_setting_makes_such_an_opt_out_suppress() -> None:
    """With webhook_number_fields naming the field, the same body suppresses the number (the correction)."""
    suppressions = MemorySuppressions()
    async with serve(suppressions, webhook_number_fields="subscriber.msisdn") as (post, publisher):
        status, _ = await post({"event": "Opt Out", "subscriber": {"msisdn": NUMBER}})
    assert status == 200
    assert await suppressions.contains("default", NUMBER)
    assert publisher.events[0][1]["suppression"] == {"applied": True}
