"""Inbound webhooks: authentication, validation, dedupe, opt-out/opt-in, publish before 2xx."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from handlers.pidj.settings import PidjAccount
from handlers.pidj.webhooks import CLAIM_SECONDS, MAX_BODY_BYTES, event_name, person_number, webhook_app
from tests.pidj.conftest import MemoryDeduper, MemorySuppressions, NoForgetDeduper
from worker.registry import WebhookContext

SECRET = "webhook-secret-0123456789"
OTHER_SECRET = "other-account-secret-98765"
NUMBER = "+18005552424"


class Publisher:
    """Collects published events; ``failures`` makes the next N publishes raise (no broker confirm)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.failures = 0

    async def __call__(self, routing_key: str, event: dict[str, Any]) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("broker did not confirm")
        self.events.append((routing_key, event))


class Harness:
    def __init__(self, client: TestClient[web.Request, web.Application], ctx: WebhookContext) -> None:
        self.client = client
        self.ctx = ctx

    @property
    def published(self) -> list[tuple[str, dict[str, Any]]]:
        publisher = self.ctx.publish
        assert isinstance(publisher, Publisher)
        return publisher.events

    async def post(self, path: str, **kwargs: Any) -> int:
        async with self.client.post("/webhooks/pidj/" + path, **kwargs) as answer:
            await answer.read()
            return answer.status


def accounts() -> dict[str, PidjAccount]:
    return {
        "default": PidjAccount.model_validate({"account_key": "k", "token": "t", "webhook_secret": SECRET}),
        "east": PidjAccount.model_validate(
            {"account_key": "k2", "token": "t2", "webhook_secret": OTHER_SECRET}
        ),
        "nosecret": PidjAccount.model_validate({"account_key": "k3", "token": "t3"}),
    }


async def serve(deduper: Any = None) -> AsyncIterator[Harness]:
    ctx = WebhookContext(
        accounts=accounts(),
        publish=Publisher(),
        suppressions=MemorySuppressions(),
        deduper=deduper if deduper is not None else MemoryDeduper(),
        log=structlog.get_logger("test"),
    )
    root = web.Application(client_max_size=1024 * 1024)  # as worker/http.py mounts it
    root.add_subapp("/webhooks/pidj/", webhook_app(ctx))
    async with TestClient(TestServer(root)) as client:
        yield Harness(client, ctx)


@pytest.fixture
async def hooks() -> AsyncIterator[Harness]:
    async for harness in serve():
        yield harness


@pytest.fixture
async def hooks_without_forget() -> AsyncIterator[Harness]:
    async for harness in serve(NoForgetDeduper()):
        yield harness


CREATED = {"event": "contact-created", "contact": {"uuid": "co:1", "phone": NUMBER}}


class TestAuthentication:
    async def test_secret_in_path_accepted(self, hooks: Harness) -> None:
        """POST /webhooks/pidj/<account>/<secret> is accepted and published."""
        assert await hooks.post(f"default/{SECRET}", json=CREATED) == 200
        assert [key for key, _ in hooks.published] == ["pidj.webhook.contact-created"]

    async def test_secret_in_header_accepted(self, hooks: Harness) -> None:
        """The X-Switchboard-Secret header works too."""
        assert await hooks.post("default", json=CREATED, headers={"X-Switchboard-Secret": SECRET}) == 200
        assert len(hooks.published) == 1

    @pytest.mark.parametrize(
        ("path", "headers"),
        [
            (f"default/{SECRET}x", {}),
            ("default/wrong", {}),
            ("default", {}),
            ("default", {"X-Switchboard-Secret": "wrong"}),
            (f"east/{SECRET}", {}),  # another account's secret
            (f"unknown/{SECRET}", {}),
            ("nosecret/anything-at-all-here", {}),  # an account without a secret takes no webhooks
        ],
    )
    async def test_wrong_secret_is_401_and_nothing_happens(
        self, hooks: Harness, path: str, headers: dict[str, str]
    ) -> None:
        """Wrong, missing or foreign secrets, unknown accounts: 401, nothing published or suppressed."""
        opt_out = {"event": "opt-out", "contact": {"phone": NUMBER}}
        assert await hooks.post(path, json=opt_out, headers=headers) == 401
        assert hooks.published == []
        assert await hooks.ctx.suppressions.list() == []

    async def test_each_account_uses_its_own_secret(self, hooks: Harness) -> None:
        """The east account's secret works on /east and the event names the account."""
        assert await hooks.post(f"east/{OTHER_SECRET}", json=CREATED) == 200
        assert hooks.published[0][1]["account"] == "east"


class TestValidation:
    @pytest.mark.parametrize(
        "body",
        [b"not json", b"[1,2]", b'{"contact": {}}', b'{"event": 5}', b'{"event": ""}', b'{"event": "a.b#"}'],
    )
    async def test_bad_bodies_are_400(self, hooks: Harness, body: bytes) -> None:
        """Not JSON, not an object, no usable event name: 400 and nothing published."""
        assert (
            await hooks.post(f"default/{SECRET}", data=body, headers={"Content-Type": "application/json"})
            == 400
        )
        assert hooks.published == []

    async def test_oversize_is_413(self, hooks: Harness) -> None:
        """A body over 256 KiB is refused with 413."""
        body = {"event": "text-received", "text": {"message": "x" * MAX_BODY_BYTES}}
        assert await hooks.post(f"default/{SECRET}", json=body) == 413
        assert hooks.published == []

    async def test_get_is_405(self, hooks: Harness) -> None:
        """Only POST is served."""
        async with hooks.client.get(f"/webhooks/pidj/default/{SECRET}") as answer:
            assert answer.status == 405

    async def test_form_body_is_accepted(self, hooks: Harness) -> None:
        """A form-encoded webhook is read too, JSON-looking values decoded."""
        form = {"event": "text-received", "text": '{"message": "hi", "phone_from": "+18005552424"}'}
        assert await hooks.post(f"default/{SECRET}", data=form) == 200
        assert hooks.published[0][1]["data"]["text"]["message"] == "hi"


class TestPublishing:
    async def test_event_shape_keeps_unknown_fields(self, hooks: Harness) -> None:
        """The event has the agreed envelope and the whole body, unknown fields included."""
        body = {**CREATED, "new_field": {"nested": [1, 2]}}
        assert await hooks.post(f"default/{SECRET}", json=body) == 200
        key, event = hooks.published[0]
        assert key == "pidj.webhook.contact-created"
        assert set(event) == {"event_id", "type", "event", "account", "received_at", "data"}
        assert (event["type"], event["event"], event["account"], event["data"]) == (
            "pidj.webhook",
            "contact-created",
            "default",
            body,
        )
        assert event["received_at"].endswith("Z")

    async def test_unknown_event_is_published(self, hooks: Harness) -> None:
        """An event the document does not name is published, its name made routing-key safe."""
        assert (
            await hooks.post(
                f"default/{SECRET}", json={"event": "Interaction Closed", "task": {"id": "ci:1"}}
            )
            == 200
        )
        assert hooks.published[0][0] == "pidj.webhook.interaction-closed"

    async def test_duplicate_is_published_once(self, hooks: Harness) -> None:
        """Pidj's retry of the same body answers 200 without a second event."""
        assert await hooks.post(f"default/{SECRET}", json=CREATED) == 200
        assert await hooks.post(f"default/{SECRET}", json=CREATED) == 200
        assert len(hooks.published) == 1

    async def test_same_body_on_two_accounts_is_two_events(self, hooks: Harness) -> None:
        """Dedupe is per account."""
        await hooks.post(f"default/{SECRET}", json=CREATED)
        await hooks.post(f"east/{OTHER_SECRET}", json=CREATED)
        assert len(hooks.published) == 2

    async def test_publish_failure_is_503_and_the_retry_is_published(self, hooks: Harness) -> None:
        """No broker confirm: 503 (Pidj retries) and the retry is not taken for a duplicate."""
        publisher = hooks.ctx.publish
        assert isinstance(publisher, Publisher)
        publisher.failures = 1
        assert await hooks.post(f"default/{SECRET}", json=CREATED) == 503
        assert hooks.published == []
        assert await hooks.post(f"default/{SECRET}", json=CREATED) == 200
        assert len(hooks.published) == 1

    async def test_claim_is_short_while_publishing_and_long_after(self, hooks: Harness) -> None:
        """During publish the key is held CLAIM_SECONDS (a dead worker's claim lapses); after, the dedupe TTL."""
        deduper = hooks.ctx.deduper
        assert isinstance(deduper, MemoryDeduper)
        publisher = hooks.ctx.publish
        assert isinstance(publisher, Publisher)
        held: list[float] = []

        async def watching(routing_key: str, event: dict[str, Any]) -> None:
            held.extend(expiry - time.time() for expiry in deduper.seen.values())
            publisher.events.append((routing_key, event))

        object.__setattr__(hooks.ctx, "publish", watching)
        assert await hooks.post(f"default/{SECRET}", json=CREATED) == 200
        assert len(held) == 1 and held[0] <= CLAIM_SECONDS
        [expiry] = deduper.seen.values()
        assert expiry - time.time() > CLAIM_SECONDS

    async def test_publish_failure_without_forget_still_answers_503(
        self, hooks_without_forget: Harness
    ) -> None:
        """With a deduper that cannot forget, a failed publish is still never answered 2xx."""
        publisher = hooks_without_forget.ctx.publish
        assert isinstance(publisher, Publisher)
        publisher.failures = 1
        assert await hooks_without_forget.post(f"default/{SECRET}", json=CREATED) == 503
        assert hooks_without_forget.published == []


class TestConsent:
    async def test_opt_out_then_opt_in(self, hooks: Harness) -> None:
        """opt-out adds the contact's number to the account's list before 200; opt-in removes it."""
        out = {"event": "opt-out", "contact": {"uuid": "co:1", "phone": "+1 800 555 2424"}}
        assert await hooks.post(f"default/{SECRET}", json=out) == 200
        assert await hooks.ctx.suppressions.contains("default", NUMBER)
        assert not await hooks.ctx.suppressions.contains("east", NUMBER)
        assert hooks.published[0][0] == "pidj.webhook.opt-out"
        assert await hooks.post(f"default/{SECRET}", json={"event": "Opt In", "phone_number": NUMBER}) == 200
        assert not await hooks.ctx.suppressions.contains("default", NUMBER)

    async def test_opt_out_from_a_text_uses_phone_from(self, hooks: Harness) -> None:
        """For a text-shaped body the person is phone_from, never phone_to (our own group)."""
        body = {
            "event": "opt_out",
            "text": {"message": "STOP", "phone_to": "+18885552222", "phone_from": NUMBER},
        }
        assert await hooks.post(f"default/{SECRET}", json=body) == 200
        assert [row["number"] for row in await hooks.ctx.suppressions.list()] == [NUMBER]

    async def test_unavailable_deduper_is_503(self, hooks: Harness) -> None:
        """If the dedupe store is down the delivery is refused with 503, not published blind."""

        async def broken(*args: Any, **kwargs: Any) -> bool:
            raise OSError("store down")

        hooks.ctx.deduper.first_time = broken  # type: ignore[method-assign]
        assert await hooks.post(f"default/{SECRET}", json=CREATED) == 503
        assert hooks.published == []

    async def test_failed_suppression_is_503(self, hooks: Harness) -> None:
        """If the store cannot record the opt-out, Pidj is told to retry and nothing is published."""

        async def broken(*args: Any, **kwargs: Any) -> None:
            raise OSError("store down")

        hooks.ctx.suppressions.add = broken  # type: ignore[method-assign]
        assert await hooks.post(f"default/{SECRET}", json={"event": "opt-out", "phone": NUMBER}) == 503
        assert hooks.published == []


class TestHelpers:
    @pytest.mark.parametrize(
        ("raw", "name"),
        [
            ("Opt Out", "opt-out"),
            ("opt_in", "opt-in"),
            ("text-received", "text-received"),
            ("a.b", None),
            (3, None),
        ],
    )
    def test_event_name(self, raw: Any, name: str | None) -> None:
        """Names are lower-cased, spaces and underscores become '-', others refused."""
        assert event_name(raw) == name

    def test_person_number_prefers_contact_and_ignores_garbage(self) -> None:
        """The contact's phone first; unreadable values are skipped."""
        assert person_number({"contact": {"phone": "junk"}, "phone_number": NUMBER}) == NUMBER
        assert person_number({"text": {"phone_to": "+18885552222"}}) is None
