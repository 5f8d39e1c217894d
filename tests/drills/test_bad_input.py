"""The bad-input drill: malformed messages are rejected with a specific code, dead-lettered, and survived.

Hand-picked messages check each rejection code; hypothesis throws random
bytes, random JSON and random envelopes at the same worker. Every message gets
exactly one terminal event (``rejected``, unless a random envelope happens to
be a valid command), a copy of each rejected one lands in ``switchboard.dead``,
and the worker is still ready and working afterwards.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pika
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handlers.pidj.sandbox import PidjSimulator
from tests.support.amqp import TERMINAL, EventTap, drain_queue, publish_command, publish_raw, queue_depth
from tests.support.worker import WorkerProcess

pytestmark = [pytest.mark.drill, pytest.mark.integration]

SEND = {"to_number": "+18885553333", "from_number": "+18885552222", "text_body": "bad-input drill"}
ONE_MIB = 1024 * 1024
CODES = frozenset(
    {
        "message_too_large",
        "unsupported_encoding",
        "not_utf8",
        "not_json",
        "invalid_envelope",
        "message_id_mismatch",
        "unknown_type",
        "routing_key_mismatch",
        "unknown_account",
        "invalid_payload",
        "idempotency_conflict",
    }
)


@pytest.fixture(scope="module")
def pidj() -> Iterator[PidjSimulator]:
    simulator = PidjSimulator()
    with simulator.running_in_thread():
        yield simulator


@pytest.fixture(scope="module")
def worker(topology_declared: None, pidj: PidjSimulator) -> Iterator[WorkerProcess]:
    account = pidj.account()
    env = {
        "SWITCHBOARD_VENDORS": "pidj",
        "SWITCHBOARD_PIDJ_BASE_URL": account["base_url"],
        "SWITCHBOARD_PIDJ_ACCOUNT_KEY": account["account_key"],
        "SWITCHBOARD_PIDJ_TOKEN": account["token"],
    }
    with WorkerProcess(env) as process:
        yield process


def envelope(command_id: str, **fields: Any) -> bytes:
    document: dict[str, Any] = {"id": command_id, "type": "send_text", "payload": SEND}
    document.update(fields)
    return orjson.dumps({k: v for k, v in document.items() if v is not None})


def nested(depth: int) -> bytes:
    """A JSON object ``depth`` levels deep (orjson cannot even write one past ~254 levels)."""
    return b'{"a":' * depth + b"{}" + b"}" * depth


def deep_envelope(*, payload_extra: int = 0, meta: int = 0) -> bytes:
    """An envelope (its id is filled in at publishing) with a deeply nested payload field or meta."""
    payload = (
        orjson.dumps(SEND)[:-1] + (b',"extra":' + nested(payload_extra) if payload_extra else b"") + b"}"
    )
    if meta:
        payload = b"{}"
    return (
        b'{"id":"@ID@","type":"send_text","payload":'
        + payload
        + (b',"meta":' + nested(meta) if meta else b"")
        + b"}"
    )


@dataclass(repr=False)
class Case:
    name: str
    code: str
    body: bytes | None = None
    """None: a valid send_text envelope with the case's ``fields``; ``@ID@`` is replaced by the message id."""
    fields: dict[str, Any] = field(default_factory=dict)
    routing_key: str = "send_text"
    properties: dict[str, Any] = field(default_factory=dict)
    path: str | None = None
    readable: bool = True
    """Whether the envelope can be read (the event then has the envelope's type, not "invalid")."""


CASES = [
    Case("not_utf8", "not_utf8", body=b'{"id": "\xff\xfe"}', readable=False),
    Case("latin1", "not_utf8", body='{"id":"é"}'.encode("latin-1"), readable=False),
    Case("not_json", "not_json", body=b"{not json", readable=False),
    Case("empty", "not_json", body=b"", readable=False),
    Case("deep_array", "not_json", body=b"[" * 100_000 + b"]" * 100_000, readable=False),
    Case("deep_object", "not_json", body=b'{"a":' * 100_000 + b"1" + b"}" * 100_000, readable=False),
    Case("too_large", "message_too_large", body=b'{"pad":"' + b"x" * ONE_MIB + b'"}', readable=False),
    Case("plain_text", "unsupported_encoding", properties={"content_type": "text/plain"}, readable=False),
    Case("gzip", "unsupported_encoding", properties={"content_encoding": "gzip"}, readable=False),
    Case("json_array", "invalid_envelope", body=b"[1, 2, 3]", path="/", readable=False),
    Case("json_string", "invalid_envelope", body=b'"send_text"', path="/", readable=False),
    Case("json_null", "invalid_envelope", body=b"null", path="/", readable=False),
    Case("missing_type", "invalid_envelope", fields={"type": None}, path="/type", readable=False),
    Case("missing_payload", "invalid_envelope", fields={"payload": None}, path="/payload"),
    Case("payload_not_object", "invalid_envelope", fields={"payload": [SEND]}, path="/payload"),
    Case("type_not_string", "invalid_envelope", fields={"type": 7}, path="/type", readable=False),
    Case("unknown_envelope_field", "invalid_envelope", fields={"priority": "high"}),
    Case("meta_not_object", "invalid_envelope", fields={"meta": "trace"}, path="/meta"),
    Case("bad_account_name", "invalid_envelope", fields={"account": "a b"}, path="/account"),
    Case(
        "id_too_long",
        "invalid_envelope",
        fields={"id": "x" * 129},
        path="/id",
        properties={"message_id": None},
    ),
    Case("id_not_string", "invalid_envelope", fields={"id": 42}, path="/id"),
    Case("wrong_message_id", "message_id_mismatch", properties={"message_id": "somebody-else"}, path="/id"),
    Case(
        "unknown_type",
        "unknown_type",
        fields={"type": "launch_rocket"},
        routing_key="launch_rocket",
        path="/type",
    ),
    Case("unknown_routing_key", "routing_key_mismatch", routing_key="send_txt", path="/type"),
    Case("routing_key_of_other_type", "routing_key_mismatch", routing_key="list_groups", path="/type"),
    Case("unknown_account", "unknown_account", fields={"account": "nobody"}, path="/account"),
    Case(
        "payload_wrong_type",
        "invalid_payload",
        fields={"payload": {**SEND, "to_number": 18885553333}},
        path="/payload/to_number",
    ),
    Case("payload_missing_field", "invalid_payload", fields={"payload": {"to_number": SEND["to_number"]}}),
    Case("payload_unknown_field", "invalid_payload", fields={"payload": {**SEND, "priority": 1}}),
    Case(
        "payload_bad_number",
        "invalid_payload",
        fields={"payload": {**SEND, "to_number": "+1555"}},
        path="/payload/to_number",
    ),
    Case("payload_deeply_nested", "invalid_payload", body=deep_envelope(payload_extra=1000), path="/payload"),
    Case("meta_deeply_nested", "invalid_payload", body=deep_envelope(meta=300), path="/payload/to_number"),
]


def publish_case(case: Case, message_id: str) -> bytes:
    body = (
        case.body.replace(b"@ID@", message_id.encode())
        if case.body is not None
        else envelope(message_id, **case.fields)
    )
    values: dict[str, Any] = {
        "content_type": "application/json",
        "delivery_mode": 2,
        "message_id": message_id,
    }
    values.update(case.properties)
    publish_raw(case.routing_key, body, properties=pika.BasicProperties(**values))
    return body


def wait_for_depth(queue: str, depth: int, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while (found := queue_depth(queue)) < depth and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


def worker_still_works(worker: WorkerProcess, tap: EventTap) -> None:
    assert worker.process is not None and worker.process.poll() is None, worker.logs()[-5000:]
    assert worker.get("/readyz")[0] == 200
    command_id = publish_command("send_text", {**SEND, "text_body": f"still alive {uuid.uuid4()}"})
    assert tap.wait_for(command_id)["status"] == "succeeded"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_message_is_rejected_with_its_code(case: Case, broker: None, worker: WorkerProcess) -> None:
    """The message gets one rejected event with its specific code (and path), and one dead-lettered copy."""
    message_id = f"bad-{case.name}-{uuid.uuid4().hex[:8]}"
    with EventTap() as tap:
        body = publish_case(case, message_id)
        expected_id = (
            case.fields["id"]
            if isinstance(case.fields.get("id"), str) and len(case.fields["id"]) <= 128
            else message_id
        )
        if case.properties.get("message_id", "") is None and case.fields.get("id") is not None:
            expected_id = None
        event = (
            tap.wait_for(expected_id, timeout=20)
            if expected_id is not None
            else tap.wait_for_count(1, timeout=20)[0]
        )
        assert event["status"] == "rejected", event
        assert event["error"]["code"] == case.code, event["error"]
        if case.path is not None:
            assert event["error"]["details"]["path"] == case.path, event["error"]
        assert event["type"] == ("invalid" if not case.readable else orjson.loads(body).get("type")), event
        assert wait_for_depth("switchboard.dead", 1) == 1
        letters = drain_queue("switchboard.dead")
        assert [letter_body for _, letter_body in letters] == [body]
        headers = letters[0][0].headers or {}
        assert headers["x-switchboard-status"] == "rejected"
        assert orjson.loads(headers["x-switchboard-error"])["code"] == case.code
        assert headers["x-switchboard-event-id"] == event["event_id"]
        assert [e["event_id"] for e in tap.events if e.get("status") in TERMINAL] == [event["event_id"]]
        worker_still_works(worker, tap)


# -- property-based: whatever arrives, one outcome, no crash ------------------------------
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
ids = st.text(min_size=0, max_size=140) | st.integers() | st.none()
envelopes = st.fixed_dictionaries(
    {
        "id": ids,
        "type": st.sampled_from(
            ["send_text", "list_groups", "check_authorization", "launch_rocket", "Send Text", ""]
        )
        | json_values,
        "payload": st.sampled_from([SEND, {}, {"to_number": "+18885553333"}]) | json_values,
    },
    optional={
        "account": st.sampled_from(["default", "nobody", ""]) | json_values,
        "meta": json_values,
        "extra": json_values,
    },
)
messages = st.one_of(
    st.binary(max_size=2048).map(lambda b: ("bytes", b)),
    json_values.map(lambda v: ("json", orjson.dumps(v))),
    st.tuples(envelopes, st.booleans()).map(lambda t: ("envelope", t)),
)


def next_terminal(tap: EventTap, seen: int, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        terminal = [e for e in tap.events if e.get("status") in TERMINAL]
        if len(terminal) > seen:
            return terminal[seen]
        if time.monotonic() >= deadline:
            raise AssertionError(f"no terminal event within {timeout}s for message #{seen + 1}")
        tap._drain(0.1)


def test_random_messages_each_get_one_outcome(broker: None, worker: WorkerProcess) -> None:
    """Random bytes, JSON and envelopes: one terminal event each, rejected ones dead-lettered, worker alive."""
    outcomes: list[tuple[str, str, bytes]] = []
    with EventTap() as tap:

        @settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(
            message=messages,
            routing_key=st.sampled_from(["send_text", "send_text", "list_groups", "nope.nothing"]),
        )
        def publish_one(message: tuple[str, Any], routing_key: str) -> None:
            kind, content = message
            message_id = f"random-{uuid.uuid4().hex}"
            if kind == "envelope":
                document, same_id = content
                if same_id:
                    document = {**document, "id": message_id}
                    routing_key = (
                        document["type"]
                        if isinstance(document["type"], str) and document["type"]
                        else routing_key
                    )
                content = orjson.dumps({k: v for k, v in document.items() if v is not None or k == "meta"})
            props = pika.BasicProperties(
                content_type="application/json", delivery_mode=2, message_id=message_id
            )
            publish_raw(routing_key or "send_text", content, properties=props)
            event = next_terminal(tap, len(outcomes))
            code = (event.get("error") or {}).get("code", "-")
            assert event["status"] != "rejected" or code in CODES, event
            assert event["command_id"] in (message_id, _body_id(content)), (event, content[:200])
            outcomes.append((event["status"], code, content))

        publish_one()
        before = len(outcomes)
        worker_still_works(worker, tap)
        terminal = [e for e in tap.events if e.get("status") in TERMINAL]
        assert len(terminal) == before + 1, "a message got more than one terminal event"
    not_succeeded = [o for o in outcomes if o[0] != "succeeded"]
    assert any(status == "rejected" for status, _, _ in outcomes)
    assert wait_for_depth("switchboard.dead", len(not_succeeded)) == len(not_succeeded)
    letters = drain_queue("switchboard.dead")
    assert sorted(body for _, body in letters) == sorted(body for _, _, body in not_succeeded)


def _body_id(body: bytes) -> str | None:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    value = document.get("id") if isinstance(document, dict) else None
    return value if isinstance(value, str) else None
