"""P2P jobs: ``create_job`` and ``assign_list``.

Readings of the document (kept here, easy to change when Peerly answers):

- "only one template is allowed and will be used as the default" but the
  example sends four: a single template is the default whatever its
  ``is_default`` says (the field "defaults to false", so leaving it out and
  sending ``false`` are the same); several are accepted when exactly one has
  ``is_default: true`` (checked before sending).
- Template media is ``templates[].advanced.media`` in the table and
  ``templates[].media`` in the example: both are accepted and sent as given.
- The documented ``201`` of create-job shows no job id (only ``agents``,
  ``name``, ``status``, ``templates``). The id is read from ``id`` (or
  ``job_id``) should Peerly send one; otherwise the result's ``job_id`` is
  null, ``job_id_known`` is false and ``job_id_hint`` says how to find it
  (the job's name in Peerly's app: the document has no endpoint that lists
  jobs).
- ``assignlist`` "appends the new phone list": nothing says a repeat is
  ignored, so ``assign_list`` is unsafe to repeat. The document gives no
  side-effect-free read of a job's lists (the assign answer's
  ``phone_lists`` is the only view), so a crash in the middle of the call
  ends ``outcome_unknown`` rather than assigning again: a list appended twice
  would text its people twice. ``phone_lists`` is still read on every answer,
  and a list already shown twice is reported (``duplicate_appended``).
"""

from __future__ import annotations

from typing import Any

from handlers.peerly.client import PeerlyClient, path_segment
from handlers.peerly.validation import check_create_job
from worker.registry import CommandContext, Commands, Result

commands = Commands()

JOBS_ENDPOINT = "/1to1/jobs"
NO_JOB_ID_HINT = (
    "Peerly's answer to POST /1to1/jobs carries no job id (as documented). Find the job by its name "
    "in Peerly's app (1to1 jobs); its id is the one assign_list and upload_list.assign_to_jobs take."
)
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


@commands.command(
    "create_job",
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
    agents = answer.get("agents")
    known: dict[str, Any] = {"job_id": str(job_id), "job_id_known": True}
    if job_id is None:
        ctx.log.info("peerly created the job; its answer has no id (as documented)")
        known = {"job_id": None, "job_id_known": False, "job_id_hint": NO_JOB_ID_HINT}
    return {
        **known,
        "account_id": body["account_id"],
        "name": answer["name"],
        "status": answer.get("status"),
        "agents": agents if isinstance(agents, list) else [],
        "template_count": len(answer["templates"]),
    }


async def assign(
    client: PeerlyClient, job_id: str, list_id: int, where: str = "/payload/job_id"
) -> list[Any]:
    """``POST /1to1/jobs/{id}/assignlist``; the job's ``phone_lists`` after it."""
    answer = await client.call(
        "POST",
        ASSIGN_ENDPOINT,
        path=f"/1to1/jobs/{path_segment(job_id, where)}/assignlist",
        json={"list_id": list_id},
    )
    lists = answer.get("phone_lists") if isinstance(answer, dict) else None
    if not isinstance(lists, list):
        raise client.invalid_response(ASSIGN_ENDPOINT, "no phone_lists")
    return lists


def _times_listed(lists: list[Any], list_id: int) -> int:
    return sum(1 for item in lists if str(item) == str(list_id))


def _assign_result(
    payload: dict[str, Any], lists: list[Any], times: int, ctx: CommandContext[PeerlyClient]
) -> Result:
    if times == 0:
        ctx.log.warning("peerly's answer does not show the assigned list in the job")
    return {
        "job_id": payload["job_id"],
        "list_id": payload["list_id"],
        "phone_lists": lists,
        "list_in_job": times > 0,
        "duplicate_appended": times > 1,
    }


@commands.command(
    "assign_list",
    safe_to_repeat=False,
    example={"job_id": "1M93TFzJYm7e5xNNFlrr", "list_id": 123456},
)
async def assign_list(payload: dict[str, Any], ctx: CommandContext[PeerlyClient]) -> Result:
    """Add one ACTIVE phone list to an existing P2P job (its other lists stay); unsafe to repeat."""
    lists = await assign(ctx.client, payload["job_id"], payload["list_id"])
    return _assign_result(payload, lists, _times_listed(lists, payload["list_id"]), ctx)
