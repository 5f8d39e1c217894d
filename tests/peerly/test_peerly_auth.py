"""Peerly login and the shared JWT: md5 credentials, single flight, refresh, what the simulator refuses."""

from __future__ import annotations

import asyncio
import hashlib
import time

import aiohttp
import orjson
import pytest

from handlers.peerly.client import RENEW_MARGIN_SECONDS, PeerlyClient, jwt_exp, login_body
from handlers.peerly.lists import STATUS_ENDPOINT
from handlers.peerly.sandbox import SANDBOX_EMAIL, SANDBOX_PASSWORD, PeerlySimulator
from handlers.simulator import Fault
from tests.peerly.conftest import ClientFactory
from worker.errors import VendorAuthFailed


async def _ping(client: PeerlyClient, token: str) -> None:
    """One authenticated request: a status check of a list the simulator knows."""
    await client.call("GET", STATUS_ENDPOINT, path=f"/phonelists/{token}/checkstatus")


def _a_list(sim: PeerlySimulator) -> str:
    sim.add_active_list()
    return next(iter(sim.lists))


def test_login_body_is_md5_of_lowercased_email_and_password() -> None:
    """/token-auth gets md5(lower-cased, trimmed e-mail) and md5(password), never the raw values."""
    body = login_body(" Matthew@GoodParty.org ", "s3cret")
    assert body == {
        "email": hashlib.md5(b"matthew@goodparty.org").hexdigest(),
        "password": hashlib.md5(b"s3cret").hexdigest(),
    }


async def test_simulator_refuses_raw_credentials(
    sim: PeerlySimulator, session: aiohttp.ClientSession
) -> None:
    """The simulator answers 400 to raw credentials and, to md5 ones, 200 with the documented fields only."""
    raw = {"email": SANDBOX_EMAIL, "password": SANDBOX_PASSWORD}
    async with session.post(sim.api_url + "/token-auth", json=raw) as response:
        assert response.status == 400
    async with session.post(
        sim.api_url + "/token-auth", json=login_body(SANDBOX_EMAIL, SANDBOX_PASSWORD)
    ) as response:
        assert response.status == 200
        answer = await response.json()
    assert set(answer) == {"token", "root_accounts", "user"}
    assert jwt_exp(answer["token"]) is None  # the document shows no exp claim


@pytest.mark.parametrize(
    "header",
    [None, "Bearer {token}", "JWT", "JWT not.a.jwt", "jwt {token}", "JWT {token}x", "JWT {token} extra"],
)
async def test_simulator_refuses_bad_authorization(
    sim: PeerlySimulator, session: aiohttp.ClientSession, header: str | None
) -> None:
    """Anything but ``Authorization: JWT <valid token>`` gets a 401."""
    async with session.post(
        sim.api_url + "/token-auth", json=login_body(SANDBOX_EMAIL, SANDBOX_PASSWORD)
    ) as response:
        token = (await response.json())["token"]
    token_path = _a_list(sim)
    headers = {} if header is None else {"Authorization": header.format(token=token)}
    async with session.get(f"{sim.api_url}/phonelists/{token_path}/checkstatus", headers=headers) as response:
        assert response.status == 401
    async with session.get(
        f"{sim.api_url}/phonelists/{token_path}/checkstatus", headers={"Authorization": f"JWT {token}"}
    ) as response:
        assert response.status == 200


async def test_simulator_refuses_expired_token(sim: PeerlySimulator, session: aiohttp.ClientSession) -> None:
    """A JWT past its exp gets a 401."""
    sim.token_lifetime = -1
    async with session.post(
        sim.api_url + "/token-auth", json=login_body(SANDBOX_EMAIL, SANDBOX_PASSWORD)
    ) as response:
        token = (await response.json())["token"]
    async with session.get(
        f"{sim.api_url}/phonelists/{_a_list(sim)}/checkstatus", headers={"Authorization": f"JWT {token}"}
    ) as response:
        assert response.status == 401


async def test_200_concurrent_calls_share_one_login(sim: PeerlySimulator, client: PeerlyClient) -> None:
    """200 commands that need a token at once cause exactly one /token-auth."""
    token = _a_list(sim)
    await asyncio.gather(*(_ping(client, token) for _ in range(200)))
    assert sim.logins() == 1
    assert client.logins == 1


async def test_token_renewed_once_when_close_to_exp(sim: PeerlySimulator, make_client: ClientFactory) -> None:
    """A token that does carry exp: when fewer than 5 minutes remain, 200 concurrent calls renew it once."""
    sim.exp_claim = True
    now = [time.time()]
    client = make_client(clock=lambda: now[0])
    token = _a_list(sim)
    await _ping(client, token)
    exp = jwt_exp(client._token.value) if client._token else None
    assert exp is not None
    now[0] = exp - RENEW_MARGIN_SECONDS + 1
    await asyncio.gather(*(_ping(client, token) for _ in range(200)))
    assert sim.logins() == 2


async def test_token_expired_mid_run_refreshed_once(sim: PeerlySimulator, client: PeerlyClient) -> None:
    """A token Peerly stops accepting mid-run: 200 calls get 401, one login, every call then succeeds."""
    token = _a_list(sim)
    await _ping(client, token)
    sim.expire_tokens()
    await asyncio.gather(*(_ping(client, token) for _ in range(200)))
    assert sim.logins() == 2
    refused = [r for r in sim.requests if r.answered == 401]
    assert 1 <= len(refused) <= 200


async def test_second_401_is_auth_failure(sim: PeerlySimulator, client: PeerlyClient) -> None:
    """A request refused with 401 also after a new login ends as VendorAuthFailed, after one retry."""
    token = _a_list(sim)
    sim.add_fault(Fault(kind="status", status=401, path_prefix="/api/phonelists"))
    with pytest.raises(VendorAuthFailed):
        await _ping(client, token)
    assert sim.logins() == 2
    assert len([r for r in sim.requests if r.path.startswith("/api/phonelists")]) == 2


async def test_failed_login_is_shared_and_clean(sim: PeerlySimulator, make_client: ClientFactory) -> None:
    """Wrong credentials: 50 waiting calls share one refused login; the error names no credential."""
    client = make_client(password="wrong-password")
    token = _a_list(sim)
    results = await asyncio.gather(*(_ping(client, token) for _ in range(50)), return_exceptions=True)
    assert all(isinstance(r, VendorAuthFailed) for r in results)
    assert len([r for r in sim.requests if r.path == "/api/token-auth"]) == 1
    text = orjson.dumps(
        results[0].as_event_error() if isinstance(results[0], VendorAuthFailed) else None
    ).decode()
    for secret in ("wrong-password", SANDBOX_EMAIL, *login_body(SANDBOX_EMAIL, "wrong-password").values()):
        assert secret not in text


async def test_token_without_exp_works_and_is_renewed_by_age(
    sim: PeerlySimulator, make_client: ClientFactory
) -> None:
    """A token without exp (as documented) is used, and renewed once it is token_max_age_seconds old."""
    now = [1_000_000.0]
    client = make_client(clock=lambda: now[0], token_max_age_seconds=600)
    token = _a_list(sim)
    await asyncio.gather(*(_ping(client, token) for _ in range(20)))
    assert sim.logins() == 1
    now[0] += 599
    await _ping(client, token)
    assert sim.logins() == 1
    now[0] += 2
    await asyncio.gather(*(_ping(client, token) for _ in range(50)))
    assert sim.logins() == 2


async def test_token_without_exp_renewed_on_401(sim: PeerlySimulator, client: PeerlyClient) -> None:
    """A token without exp that Peerly stops accepting before its max age is replaced on the 401."""
    sim.token_lifetime = 0.5
    token = _a_list(sim)
    await _ping(client, token)
    sim.expire_tokens()
    await _ping(client, token)
    assert sim.logins() == 2


def test_jwt_exp_reads_claim() -> None:
    """jwt_exp reads exp from the middle segment and returns None when there is none."""
    assert jwt_exp("eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjE3MDAwMDAwMDB9.x") == 1700000000.0
    assert jwt_exp("eyJhbGciOiJIUzI1NiJ9.eyJ1c2VyX2lkIjoxfQ.c2ln") is None
    assert jwt_exp("garbage") is None
