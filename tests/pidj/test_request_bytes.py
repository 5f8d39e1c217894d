"""What the Pidj client puts on the wire is what it sent before issue 16's shortcuts, byte for byte.

The old way is spelled out here (a headers dict per call, ``urlencode``, a ``str``
URL, the ``ClientTimeout``); both ways go to a server that records the raw request.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote_plus, urlencode

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from handlers.pidj.client import FORM, PidjClient, build_form, encode_form, quote_plus_fast
from handlers.pidj.settings import PidjAccount
from tests.support.wire import read_request
from worker.vendor_http import VendorHTTP

_ANSWER = (
    b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 21\r\n\r\n{"status":"success"}\n'
)


class _Recorder:
    """An HTTP/1.1 server that answers every request with ``status: success`` and keeps its bytes."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                self.requests.append(await read_request(reader))
                writer.write(_ANSWER)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


@pytest.fixture
async def recorder() -> AsyncIterator[_Recorder]:
    rec = _Recorder()
    server = await asyncio.start_server(rec._serve, "127.0.0.1", 0)
    rec.port = server.sockets[0].getsockname()[1]
    yield rec
    server.close()
    await server.wait_closed()


FORMS: list[dict[str, Any]] = [
    {"to_number": "+18885553333", "from_number": "+18885552222", "text_body": "Your order is ready."},
    {
        "to_number": "+18885553333",
        "group_id": "gr:abc-1",
        "text_body": "Café \u2019quoted\u2019 😀 & = + % / ? # €\n",
    },
    {"name": "A B", "roles": ["admin", "agent"], "active": True, "blank": "", "skipped": None, "n": 3},
    {},
]


@pytest.mark.parametrize("fields", FORMS)
@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE"])
async def test_request_bytes_unchanged(recorder: _Recorder, method: str, fields: dict[str, Any]) -> None:
    account = PidjAccount.model_validate(
        {"base_url": f"http://127.0.0.1:{recorder.port}/api/2020", "account_key": "key-1", "token": "t%k"}
    )
    authorization = "Basic " + base64.b64encode(b"key-1:t%k").decode("ascii")
    async with aiohttp.ClientSession() as session:
        client = PidjClient(account, VendorHTTP("pidj", session, account.base_url, timeout=15.0))
        form = build_form(fields)
        await client.call(method, "/send", path="/send", form=form)
        await client.call(method, "/send", form=form)  # the cached parts a second time
        # As PidjClient.call and VendorHTTP._send did it before.
        kwargs: dict[str, Any] = {
            "headers": {"Content-Type": FORM, "Accept": "application/json", "Authorization": authorization}
        }
        if method != "GET":
            kwargs["data"] = urlencode(form or {}).encode("ascii")
        async with session.request(
            method,
            account.base_url.rstrip("/") + "/send",
            timeout=aiohttp.ClientTimeout(total=15.0),
            allow_redirects=False,
            **kwargs,
        ) as response:
            await response.read()
    assert len(recorder.requests) == 3
    assert recorder.requests[0] == recorder.requests[1] == recorder.requests[2]


_TEXT = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=40)


@given(
    st.dictionaries(_TEXT, _TEXT | st.sampled_from(["+18885553333", "+1", "+", "+12a", "+١٢٣"]), max_size=6)
)
def test_encode_form_is_urlencode(form: dict[str, str]) -> None:
    assert encode_form(form) == urlencode(form).encode("ascii")
    assert encode_form(form) == urlencode(form).encode("ascii")  # remembered parts


@pytest.mark.parametrize(
    "form",
    [{"n": 3}, {"flag": True}, {b"raw": "x"}, {"list": ["a", "b"]}, {"x": None}],  # type: ignore[dict-item]
)
def test_encode_form_leaves_other_values_to_urlencode(form: dict[Any, Any]) -> None:
    assert encode_form(form) == urlencode(form).encode("ascii")


def test_a_lone_surrogate_fails_as_urlencode_does() -> None:
    with pytest.raises(UnicodeEncodeError):
        urlencode({"text_body": "\ud800"})
    with pytest.raises(UnicodeEncodeError):
        encode_form({"text_body": "\ud800"})


@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=300))
def test_quote_plus_fast_is_quote_plus_for_ascii(text: str) -> None:
    assert quote_plus_fast(text) == quote_plus(text)


@given(st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=300))
def test_quote_plus_fast_is_quote_plus(text: str) -> None:
    assert quote_plus_fast(text) == quote_plus(text)


def test_quote_plus_fast_every_ascii_character() -> None:
    every = "".join(chr(code) for code in range(128))
    assert quote_plus_fast(every) == quote_plus(every)
    for char in every:
        assert quote_plus_fast(char) == quote_plus(char)
        assert quote_plus_fast(f"a {char} b") == quote_plus(f"a {char} b")


def test_encode_form_keeps_no_value() -> None:
    """Field names are remembered; phone numbers and texts are not kept beyond their request."""
    from handlers.pidj import client

    encode_form({"to_number": "+18885553333", "text_body": "hello there"})
    assert "to_number" in client._QUOTED
    assert "+18885553333" not in client._QUOTED and "hello there" not in client._QUOTED
