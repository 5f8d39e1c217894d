"""Phone lists: ``upload_list`` (upload, follow to ACTIVE, assign) and ``check_list_status``.

``upload_list`` runs in steps; only the first one sends the list:

1. (no ``ctx.state``) write or read the file, ``POST /phonelists``, answer
   ``Continue`` with the list status token: the runtime publishes
   ``upload_list.progress`` and calls again after ``list_poll_seconds``
   through a broker delay queue, holding no worker slot meanwhile.
2. (``ctx.state``) ``GET /phonelists/{token}/checkstatus``; progress is
   published only when ``list_state`` changed. A check that fails with a
   transient error (5xx, 429, timeout) is a missed poll: the next one follows
   (runtime attempts count every step, so retrying polls there would soon
   exhaust them). Not ACTIVE after
   ``list_deadline_seconds`` since the first attempt ->
   ``list_processing_timeout``. A state naming a failure (ERROR, FAILED,
   INVALID, REJECTED, DELETED; the document lists none, so this is our
   reading) -> ``list_processing_failed``.
3. Once ACTIVE with a ``list_id`` (recorded by a step of its own, so a step
   that assigns never also polls): one ``assignlist`` per step for each job
   of ``assign_to_jobs`` (the state remembers which are done), then the
   result. ``assignlist`` appends, so an assign that may have acted is never
   sent again: an assign step re-run after its worker died mid-step
   (``ctx.resumed``), and an assign that failed after Peerly may have acted
   (timeout, 5xx other than 503, dropped answer), end the command
   ``outcome_unknown`` with ``list_id``, ``assigned_jobs`` and
   ``unknown_job``. One refused before acting (429, 503, no connection) is
   retried. A job whose answer lists the list twice is still reported in the
   result's ``duplicate_appended_jobs``.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

import orjson

from handlers.peerly.client import PeerlyClient, path_segment
from handlers.peerly.files import STREAM_HOLD_BYTES, csv_from_rows, open_reference, post_file
from handlers.peerly.jobs import assign
from handlers.peerly.validation import check_upload_list, invalid_rows_report, normalise_rows
from worker import file_budget
from worker.errors import InvalidPayload, OutcomeUnknown, PermanentError, TransientError
from worker.registry import CommandContext, Commands, Continue, Result

commands = Commands()

ACTIVE = "ACTIVE"
FAILED_STATES = ("ERROR", "FAIL", "INVALID", "REJECT", "DELETED")
ASSIGN_STEP_SECONDS = 1.0
"""Pause between two job assignments (each its own step, so each is remembered)."""

LISTS_ENDPOINT = "/phonelists"
STATUS_ENDPOINT = "/phonelists/{list_status_token}/checkstatus"

# Form fields sent as given; ``account_id`` becomes ``account`` and list_map is JSON.
_FORM_FIELDS = (
    "identity_id",
    "list_name",
    "split_states",
    "split_timezones",
    "suppress_cell_phones",
    "wireless_suppress_initials",
    "use_nat_dnc",
    "use_state_dnc",
    "dnc_suppress_initials",
    "state_dnc_suppress_initials",
    "opt_in",
    "opt_in_source_url",
    "opt_exempt_initials",
    "last_contact",
    "list_description",
)


@dataclass(frozen=True)
class ListStatus:
    state: str
    list_id: int | None

    @property
    def active(self) -> bool:
        return self.state == ACTIVE and self.list_id is not None

    @property
    def failed(self) -> bool:
        return any(word in self.state.upper() for word in FAILED_STATES)


async def fetch_status(client: PeerlyClient, token: str) -> ListStatus:
    """``GET /phonelists/{token}/checkstatus``, checked against the document's shape."""
    segment = path_segment(token, "/payload/list_status_token")
    body = await client.call("GET", STATUS_ENDPOINT, path=f"/phonelists/{segment}/checkstatus")
    data = body.get("Data") if isinstance(body, dict) else None
    state = data.get("list_state", data.get("list_status")) if isinstance(data, dict) else None
    if not isinstance(state, str) or not state:
        raise client.invalid_response(STATUS_ENDPOINT, "no Data.list_state")
    raw_id = data.get("list_id") if isinstance(data, dict) else None
    if raw_id is None:
        return ListStatus(state, None)
    if isinstance(raw_id, str) and raw_id.isdigit():
        raw_id = int(raw_id)
    if isinstance(raw_id, bool) or not isinstance(raw_id, int):
        raise client.invalid_response(STATUS_ENDPOINT, "Data.list_id is not a number")
    return ListStatus(state, raw_id)


@commands.command(
    "check_list_status",
    safe_to_repeat=True,
    example={"list_status_token": "0f1e2d3c4b5a69788796a5b4c3d2e1f0"},
)
async def check_list_status(payload: dict[str, Any], ctx: CommandContext[PeerlyClient]) -> Result:
    """Ask Peerly how far an uploaded phone list is; ACTIVE lists have a list_id."""
    status = await fetch_status(ctx.client, payload["list_status_token"])
    return {
        "list_status_token": payload["list_status_token"],
        "list_state": status.state,
        "list_id": status.list_id,
        "active": status.active,
    }


UPLOAD_EXAMPLE: dict[str, Any] = {
    "account_id": "12345678",
    "list_name": "Precinct 12 volunteers",
    "suppress_cell_phones": 4,
    "use_nat_dnc": 1,
    "use_state_dnc": 1,
    "rows": [
        {"lead_phone": "(202) 555-0143", "first_name": "Ada", "last_name": "Lovelace", "state": "DC"},
        {"lead_phone": "+1 312 555 0187", "first_name": "Grace", "last_name": "Hopper", "zip": "60601"},
    ],
    "assign_to_jobs": ["1M93TFzJYm7e5xNNFlrr"],
}


@commands.command(
    "upload_list",
    safe_to_repeat=False,
    check=check_upload_list,
    example=UPLOAD_EXAMPLE,
)
async def upload_list(payload: dict[str, Any], ctx: CommandContext[PeerlyClient]) -> Result | Continue:
    """Upload a phone list, follow it until ACTIVE, then assign it to the given jobs."""
    if ctx.state is None:
        return await _upload(payload, ctx)
    state = dict(ctx.state)
    if state.get("list_id") is None:
        step = await _poll(ctx, state)
        if step is not None:
            return step
        if payload.get("assign_to_jobs"):
            # ACTIVE is recorded before any assign: a step re-run after a crash
            # then knows whether it was polling (safe) or assigning (not).
            changed = bool(state.pop("state_changed", False))
            progress = _progress(state) if changed else None
            return Continue(state=state, after_seconds=ASSIGN_STEP_SECONDS, progress=progress)
    return await _assign_next(payload, ctx, state)


async def _upload(payload: dict[str, Any], ctx: CommandContext[PeerlyClient]) -> Continue:
    client = ctx.client
    account = client.account_id(payload)
    fields = {name: _form_value(payload[name]) for name in _FORM_FIELDS if name in payload}
    fields["account"] = account
    if "rows" in payload:
        valid, invalid = normalise_rows(payload["rows"])
        if not valid:
            raise InvalidPayload("no row has a valid US or Canadian lead_phone", path="/payload/rows")
        upload, list_map = csv_from_rows(valid)
        fields["list_map"] = _json(list_map)
        async with file_budget.budget.hold(upload.hold_bytes):
            body = await post_file(client, LISTS_ENDPOINT, fields, "file", upload, upload.content_type)
        rows_sent: int | None = len(valid)
    else:
        invalid, rows_sent = [], None
        if payload.get("list_map") is not None:
            fields["list_map"] = _json(payload["list_map"])
        async with file_budget.budget.hold(STREAM_HOLD_BYTES):
            source = await open_reference(
                payload["file"], client.account, client.http.session, "/payload/file"
            )
            try:
                content_type = _list_type(source.filename)
            except InvalidPayload:
                await source.close()  # a URL's answer is open: let its connection go
                raise
            body = await post_file(client, LISTS_ENDPOINT, fields, "file", source, content_type)
    data = body.get("Data") if isinstance(body, dict) else None
    if not isinstance(data, dict) or not isinstance(data.get("token"), str) or not data["token"]:
        raise client.invalid_response(LISTS_ENDPOINT, "no Data.token")
    token = data["token"]
    list_state = data.get("list_state") if isinstance(data.get("list_state"), str) else "PENDING"
    state = {
        "list_status_token": token,
        "list_state": list_state,
        "list_id": None,
        "pending_list_id": data.get("pending_list_id"),
        "list_name": payload["list_name"],
        "rows_sent": rows_sent,
        "invalid_rows": invalid_rows_report(invalid),
        "assigned_jobs": [],
    }
    ctx.log.info(
        "peerly list uploaded", list_state=list_state, rows_sent=rows_sent, invalid_rows=len(invalid)
    )
    progress = _progress(state)
    return Continue(state=state, after_seconds=client.account.list_poll_seconds, progress=progress)


def _list_type(name: str) -> str:
    """The content type of a referenced list; anything but .csv or .zip is refused."""
    if name.lower().endswith(".csv"):
        return "text/csv"
    if name.lower().endswith(".zip"):
        return "application/zip"
    raise InvalidPayload("a phone list is a .csv or a .zip of .csv files", path="/payload/file")


async def _poll(ctx: CommandContext[PeerlyClient], state: dict[str, Any]) -> Continue | None:
    """One status check: a Continue while processing, None once ACTIVE (state updated)."""
    account = ctx.client.account
    token = state["list_status_token"]
    try:
        status = await fetch_status(ctx.client, token)
    except TransientError as exc:
        # A status check is a read: one that fails is a missed poll, not a failed
        # upload. The deadline bounds how long we keep trying.
        _check_deadline(ctx, state.get("list_state", "unknown"), token)
        ctx.log.warning("peerly list status check failed; polling again", code=exc.code)
        return Continue(state=state, after_seconds=max(exc.retry_after or 0.0, account.list_poll_seconds))
    changed = status.state != state.get("list_state")
    state["list_state"] = status.state
    if status.active:
        state["list_id"] = status.list_id
        state["state_changed"] = changed
        return None
    details = {"list_status_token": token, "list_state": status.state}
    if status.failed:
        raise PermanentError(
            f"peerly could not process the list (list_state {status.state})",
            code="list_processing_failed",
            details=details,
        )
    waited = _check_deadline(ctx, status.state, token)
    after = min(account.list_poll_seconds, account.list_deadline_seconds - waited)
    return Continue(
        state=state, after_seconds=max(after, 0.0), progress=_progress(state) if changed else None
    )


async def _assign_next(
    payload: dict[str, Any], ctx: CommandContext[PeerlyClient], state: dict[str, Any]
) -> Result | Continue:
    changed = bool(state.pop("state_changed", False))
    done: list[str] = list(state.get("assigned_jobs", []))
    pending = [job for job in payload.get("assign_to_jobs", []) if job not in done]
    if pending:
        job = pending[0]
        if ctx.resumed:
            raise _assign_unknown(state["list_id"], done, job, "the worker stopped in the middle of it")
        try:
            where = f"/payload/assign_to_jobs/{payload['assign_to_jobs'].index(job)}"
            lists = await assign(ctx.client, job, state["list_id"], where)
        except PermanentError as exc:
            exc.details.update({"list_id": state["list_id"], "assigned_jobs": done, "failed_job": job})
            raise
        except TransientError as exc:
            if exc.maybe_applied:
                raise _assign_unknown(state["list_id"], done, job, exc.message) from exc
            raise
        if sum(1 for item in lists if str(item) == str(state["list_id"])) > 1:
            # The job already had this list (another command, or by hand): Peerly appended it again.
            ctx.log.error(
                "peerly job lists this phone list twice; remove the extra entry in Peerly", job_id=job
            )
            state["duplicate_appended_jobs"] = [*state.get("duplicate_appended_jobs", []), job]
        done.append(job)
        state["assigned_jobs"] = done
        if len(pending) > 1:
            progress = _progress(state) if changed else None
            return Continue(state=state, after_seconds=ASSIGN_STEP_SECONDS, progress=progress)
    duplicates = state.get("duplicate_appended_jobs", [])
    return {
        **_progress(state),
        "list_id": state["list_id"],
        "assigned_jobs": done,
        "duplicate_appended_jobs": duplicates,
    }


def _assign_unknown(list_id: int, done: list[str], job: str, why: str) -> OutcomeUnknown:
    """An assign that may have appended the list: not sent again (a second append texts twice)."""
    return OutcomeUnknown(
        f"assigning the list to a job may or may not have taken effect ({why}); not sent again, "
        "because Peerly appends a list assigned twice: check the job in Peerly's app",
        details={"list_id": list_id, "assigned_jobs": done, "unknown_job": job},
    )


def _check_deadline(ctx: CommandContext[PeerlyClient], list_state: str, token: str) -> float:
    """Seconds since the first attempt; list_processing_timeout once past the deadline."""
    waited = _seconds_since(ctx.first_attempt_at)
    if waited >= ctx.client.account.list_deadline_seconds:
        raise PermanentError(
            f"the list is not ACTIVE after {int(waited)} s (list_state {list_state})",
            code="list_processing_timeout",
            details={"list_status_token": token, "list_state": list_state},
        )
    return waited


def _progress(state: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "list_status_token",
        "list_state",
        "list_id",
        "pending_list_id",
        "list_name",
        "rows_sent",
        "invalid_rows",
    )
    return {key: state.get(key) for key in keys}


def _seconds_since(moment: datetime.datetime) -> float:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return (datetime.datetime.now(datetime.UTC) - moment).total_seconds()


def _form_value(value: Any) -> str:
    # JSON Schema lets 1.0 pass as the integer 1; Peerly wants "1".
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()
