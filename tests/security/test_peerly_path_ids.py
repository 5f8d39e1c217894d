"""Issue 14 item 11: an id that goes into a Peerly URL path cannot reach another endpoint.

``job_id`` ``..`` once turned ``/1to1/jobs/../assignlist`` into
``/1to1/assignlist`` (and a list token ``..`` into ``/checkstatus``): HTTP
clients resolve dot segments, even percent-encoded ones.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

import schemas
from handlers.peerly.client import PeerlyClient, path_segment
from handlers.peerly.jobs import assign_list
from handlers.peerly.lists import check_list_status
from handlers.peerly.sandbox import PeerlySimulator, sandbox_account
from handlers.peerly.settings import PeerlyAccount
from tests.peerly.conftest import make_ctx
from worker.errors import InvalidPayload
from worker.validation import SchemaValidator
from worker.vendor_http import VendorHTTP

HOSTILE_IDS = ["..", ".", "../../token-auth", "%2e%2e", "%2E%2E", "a/b", "a?b", "a#b", ""]


@pytest.fixture
async def sim() -> AsyncIterator[PeerlySimulator]:
    simulator = PeerlySimulator(seed=3)
    await simulator.start()
    yield simulator
    await simulator.stop()


@pytest.fixture
async def client(sim: PeerlySimulator) -> AsyncIterator[PeerlyClient]:
    async with aiohttp.ClientSession() as session:
        account = PeerlyAccount.model_validate(sandbox_account(sim))
        yield PeerlyClient(account, VendorHTTP("peerly", session, account.base_url, timeout=5))


def _validator(name: str) -> SchemaValidator:
    return SchemaValidator(schemas.load(name), prefix="/payload")


@pytest.mark.parametrize("hostile", HOSTILE_IDS)
def test_schemas_refuse_hostile_path_ids(hostile: str) -> None:
    """assign_list.job_id, upload_list.assign_to_jobs[] and check_list_status.list_status_token refuse it."""
    cases = [
        ("assign_list", {"job_id": hostile, "list_id": 1}, "/payload/job_id"),
        ("check_list_status", {"list_status_token": hostile}, "/payload/list_status_token"),
        (
            "upload_list",
            {
                "list_name": "x",
                "suppress_cell_phones": 4,
                "use_nat_dnc": 1,
                "use_state_dnc": 1,
                "rows": [{"lead_phone": "2025550143"}],
                "assign_to_jobs": [hostile],
            },
            "/payload/assign_to_jobs/0",
        ),
    ]
    for name, payload, path in cases:
        with pytest.raises(InvalidPayload) as caught:
            _validator(name).validate(payload)
        assert caught.value.path == path, name


def test_schemas_accept_real_looking_ids() -> None:
    """The documented job id and a hex list token still pass."""
    _validator("assign_list").validate({"job_id": "1M93TFzJYm7e5xNNFlrr", "list_id": 1})
    _validator("check_list_status").validate({"list_status_token": "0f1e2d3c4b5a69788796a5b4c3d2e1f0"})


@pytest.mark.parametrize("hostile", ["..", "."])
async def test_dot_job_id_never_reaches_another_endpoint(
    sim: PeerlySimulator, client: PeerlyClient, hostile: str
) -> None:
    """Even past the schema, assign_list with job_id '..' sends nothing: no request to /api/1to1/assignlist."""
    with pytest.raises(InvalidPayload) as caught:
        await assign_list({"job_id": hostile, "list_id": sim.add_active_list()}, make_ctx(client))
    assert caught.value.path == "/payload/job_id"
    assert [r.path for r in sim.requests if "assignlist" in r.path] == []


async def test_dot_list_token_never_reaches_another_endpoint(
    sim: PeerlySimulator, client: PeerlyClient
) -> None:
    """check_list_status with token '..' sends nothing: no request to /api/checkstatus."""
    with pytest.raises(InvalidPayload):
        await check_list_status({"list_status_token": ".."}, make_ctx(client))
    assert [r.path for r in sim.requests if "checkstatus" in r.path] == []


def test_path_segment_encodes_separators() -> None:
    """Slashes, percent signs and query characters are encoded: one id is one path segment."""
    assert path_segment("a/b?c#d%2e", "/x") == "a%2Fb%3Fc%23d%252e"
    with pytest.raises(InvalidPayload):
        path_segment("...", "/x")
