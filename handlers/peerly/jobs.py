"""P2P jobs: ``create_job`` and ``assign_list``.

Readings of the document (kept here, easy to change when Peerly answers):

- "only one template is allowed" but the example sends four: several are
  accepted, exactly one with ``is_default: true`` (checked before sending).
- Template media is ``templates[].advanced.media`` in the table and
  ``templates[].media`` in the example: both are accepted and sent as given.
- The documented ``201`` of create-job shows no job id; the id is read from
  ``id`` (or ``job_id``) when Peerly sends one, else the result's ``job_id``
  is null and a warning is logged.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from handlers.peerly.client import PeerlyClient
from handlers.peerly.validation import check_create_job
from worker.registry import CommandContext, Result, registry

JOBS_ENDPOINT = "/1to1/jobs"
ASSIGN_ENDPOINT = "/1to1/jobs/{id}/assignlist"

JOB_EXAMPLE: dict[str, Any] = {
    "account_id": "88889754",
    "name": "01 Job Example",
    "status": "active",
    "did_state": "FL",
    "did_npa_subset": ["954", "754"],
    "agent_ids": ["MhzSZuveWPMrdkGGPKt7LYGIDKc2@88889754"],
    "can_use_mms": True,
    "schedule_id": 10537189,
    "start_date": "2025-06-03",
    "end_date": "2025-06-03",
    "ai_enabled": True,
    "ai_auto_opt_out_threshold": "EXTREMELY_LIKELY",
    "templates": [
        {
            "id": "1M93TFzJYm7e5xNNFlrr",
            "is_default": True,
            "title": "Default Template",
            "text": "Hi {first_name}, this is {agent_first_name}. Can you donate today?\n\nSTOP to stop",
            "advanced": {
                "media": {"media_id": "08666501-a3bd-4f4a-abf6-02eebdf4b53a8", "media_type": "VIDEO"}
            },
        },
        {
            "id": "BCegZ9WKXfFGsbuqdxq8",
            "is_default": False,
            "title": "Able to Donate",
            "text": "Thank you! Pledge here: https://{tracked_link_1}",
        },
    ],
    "questions": [
        {
            "id": "9TyQPSg5OuTEYk55ZEGe",
            "controlType": "select",
            "title": "Are you able to donate?",
            "template": "",
            "responses": [{"id": "PR7sF6kgkY1iseeKk8A6", "text": "Yes", "template": "BCegZ9WKXfFGsbuqdxq8"}],
        }
    ],
    "tracked_links": [
        {"id": 1, "destination_url": "https://example.org/donate", "domain_name": "votenow.win"}
    ],
}


@registry.command(
    "create_job",
    vendor="peerly",
    safe_to_repeat=False,
    check=check_create_job,
    example=JOB_EXAMPLE,
)
async def create_job(payload: dict[str, Any], ctx: CommandContext[PeerlyClient]) -> Result:
    """Create a P2P (1to1) SMS job with its templates, questions and caller-id state."""
    client = ctx.client
    body = {**payload, "account_id": client.account_id(payload)}
    answer = await client.call("POST", JOBS_ENDPOINT, json=body)
    if (
        not isinstance(answer, dict)
        or not isinstance(answer.get("name"), str)
        or not isinstance(answer.get("templates"), list)
    ):
        raise client.invalid_response(JOBS_ENDPOINT, "no name or templates")
    job_id = answer.get("id", answer.get("job_id"))
    if job_id is None:
        ctx.log.warning("peerly created a job without telling its id")
    agents = answer.get("agents")
    return {
        "job_id": None if job_id is None else str(job_id),
        "account_id": body["account_id"],
        "name": answer["name"],
        "status": answer.get("status"),
        "agents": agents if isinstance(agents, list) else [],
        "template_count": len(answer["templates"]),
    }


async def assign(client: PeerlyClient, job_id: str, list_id: int) -> list[Any]:
    """``POST /1to1/jobs/{id}/assignlist``; the job's ``phone_lists`` after it."""
    answer = await client.call(
        "POST",
        ASSIGN_ENDPOINT,
        path=f"/1to1/jobs/{quote(job_id, safe='')}/assignlist",
        json={"list_id": list_id},
    )
    lists = answer.get("phone_lists") if isinstance(answer, dict) else None
    if not isinstance(lists, list):
        raise client.invalid_response(ASSIGN_ENDPOINT, "no phone_lists")
    return lists


@registry.command(
    "assign_list",
    vendor="peerly",
    safe_to_repeat=True,
    example={"job_id": "1M93TFzJYm7e5xNNFlrr", "list_id": 123456},
)
async def assign_list(payload: dict[str, Any], ctx: CommandContext[PeerlyClient]) -> Result:
    """Add one ACTIVE phone list to an existing P2P job (its other lists stay)."""
    lists = await assign(ctx.client, payload["job_id"], payload["list_id"])
    in_job = str(payload["list_id"]) in {str(item) for item in lists}
    if not in_job:
        ctx.log.warning("peerly's answer does not show the assigned list in the job")
    return {
        "job_id": payload["job_id"],
        "list_id": payload["list_id"],
        "phone_lists": lists,
        "list_in_job": in_job,
    }
