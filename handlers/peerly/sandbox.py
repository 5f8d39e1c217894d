"""A strict Peerly simulator: the document's routes on a real loopback server.

Routes are under ``/api`` (clients use ``<base_url>/api`` as Peerly's base):

- ``POST /api/token-auth``  md5 hex e-mail and password only (raw ones get 400);
  answers as documented: ``token``, ``root_accounts``, ``user``. The token
  is a HS256 JWT *without* ``exp`` (the document shows none); it stops
  working ``token_lifetime`` seconds after it was issued (kept here, not in
  the token)
- every other route wants ``Authorization: JWT <token>``: 401 when it is
  missing, not ``JWT``, forged, expired, or expired by :meth:`expire_tokens`
- ``POST /api/phonelists`` multipart; every required and conditional field of
  the upload table; a list is ``PENDING``, ``PROCESSING`` after half of
  ``list_active_after`` seconds, then ``ACTIVE`` with a ``list_id``
- ``GET  /api/phonelists/{token}/checkstatus``
- ``POST /api/1to1/jobs`` JSON; answers the documented ``201`` (``agents``,
  ``name``, ``status``, ``templates``: no job id; tests find the id in the
  ``job_created`` side effect, as a person would in Peerly's app)
- ``POST /api/1to1/jobs/{id}/assignlist`` JSON; "appends the new phone list":
  a list assigned twice is listed twice (nothing says Peerly ignores it)
- ``POST /api/v2/media`` multipart; answers ``201`` with ``"status": "ERROR"``
  when the title or file name contains ``corrupt``

Test hooks by list name: ``NEVER-ACTIVE...`` stays PENDING, ``FAIL-...`` ends
in ``ERROR``; :meth:`PeerlySimulator.answer_with` cans any answer. Side effects
recorded: ``list_uploaded``, ``job_created``, ``list_assigned``, ``media_created``.
Faults come from :class:`SimulatorBase`. :func:`start_sandbox` and :func:`serve`
also seed what the commands' example payloads name (accounts 12345678 and
88889754, job ``1M93TFzJYm7e5xNNFlrr``, ACTIVE list 123456) so they work as given.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import mimetypes
import secrets
import sys
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

import orjson
from aiohttp import web

from handlers.peerly import sandbox_rules as rules
from handlers.simulator import SimulatorBase
from worker.registry import Sandbox

SANDBOX_EMAIL = "sandbox@switchboard.invalid"
SANDBOX_PASSWORD = "sandbox-password"
SANDBOX_ACCOUNT_ID = "12345678"


@dataclass
class SimList:
    token: str
    account: str
    list_name: str
    pending_list_id: int
    rows: int
    uploaded_at: float
    list_id: int | None = None


@dataclass
class SimJob:
    id: str
    account_id: str
    body: dict[str, Any]
    phone_lists: list[int] = field(default_factory=list)

    def answer(self) -> dict[str, Any]:
        """The documented 201 of create-job: no id, no phone_lists.

        ``agents`` is ``[]`` as in the document's examples: the shape of an
        entry is never shown, so none is invented here.
        """
        return {
            "agents": [],
            "name": self.body["name"],
            "status": self.body.get("status", "active"),
            "templates": self.body["templates"],
        }

    def assign_answer(self) -> dict[str, Any]:
        """The documented 200 of assignlist: the job with its phone_lists."""
        return {**self.answer(), "phone_lists": list(self.phone_lists)}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _error(text: str, status: int = 400, key: str = "error") -> web.Response:
    return web.json_response({key: text}, status=status)


class PeerlySimulator(SimulatorBase):
    """Peerly as the document describes it, with records and faults."""

    vendor = "peerly"

    def __init__(
        self,
        *,
        email: str = SANDBOX_EMAIL,
        password: str = SANDBOX_PASSWORD,
        accounts: tuple[str, ...] = (SANDBOX_ACCOUNT_ID,),
        list_active_after: float = 2.0,
        token_lifetime: float = 3600.0,
        exp_claim: bool = False,
        seed: int | None = None,
    ) -> None:
        self.credentials = (
            hashlib.md5(email.strip().lower().encode()).hexdigest(),
            hashlib.md5(password.encode()).hexdigest(),
        )
        self.accounts = frozenset(accounts)
        self.list_active_after = list_active_after
        self.token_lifetime = token_lifetime
        self.exp_claim = exp_claim
        """Put ``exp`` in tokens (not documented; for testing a Peerly that does)."""
        self._secret = secrets.token_bytes(32)
        self._ids = itertools.count(1)
        self.lists: dict[str, SimList] = {}
        self.jobs: dict[str, SimJob] = {}
        self.media: dict[str, dict[str, Any]] = {}
        self._expired: set[str] = set()
        self._expires_at: dict[str, float] = {}
        self._canned: dict[tuple[str, str], tuple[int, Any]] = {}
        self._issued: list[str] = []
        super().__init__(seed=seed)

    # -- for tests ------------------------------------------------------
    @property
    def api_url(self) -> str:
        """What a client uses as ``base_url``."""
        return self.base_url + "/api"

    def expire_tokens(self) -> None:
        """Every token issued so far is now expired (a JWT running out mid-run)."""
        with self._lock:
            self._expired.update(self._issued)

    def answer_with(self, method: str, path: str, status: int, body: Any) -> None:
        """Answer ``method path`` (after auth) with this JSON instead (odd shapes for tests)."""
        with self._lock:
            self._canned[(method.upper(), path)] = (status, body)

    def logins(self) -> int:
        with self._lock:
            return sum(1 for r in self.requests if r.path == "/api/token-auth" and r.answered == 200)

    def add_job(
        self, name: str = "Sandbox job", account_id: str = SANDBOX_ACCOUNT_ID, job_id: str | None = None
    ) -> str:
        """Create a job directly (no request, no side effect); its id."""
        job = SimJob(job_id or self._new_job_id(), account_id, {"name": name, "templates": []})
        with self._lock:
            self.jobs[job.id] = job
        return job.id

    def add_active_list(
        self,
        account: str = SANDBOX_ACCOUNT_ID,
        name: str = "Sandbox list",
        *,
        token: str | None = None,
        list_id: int | None = None,
    ) -> int:
        """An already ACTIVE list (no request, no side effect); its list_id."""
        entry = self._new_list(account, name, rows=1, token=token)
        entry.uploaded_at -= self.list_active_after
        entry.list_id = list_id
        return self._list_state(entry)[1] or 0

    def job_lists(self, job_id: str) -> list[int]:
        with self._lock:
            return list(self.jobs[job_id].phone_lists)

    def reset_state(self) -> None:
        with self._lock:
            self.lists.clear()
            self.jobs.clear()
            self.media.clear()

    # -- routes -----------------------------------------------------------
    def setup_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/api/token-auth", self._token_auth)
        router.add_post("/api/phonelists", self._authorized(self._upload_list))
        router.add_get("/api/phonelists/{token}/checkstatus", self._authorized(self._check_status))
        router.add_post("/api/1to1/jobs", self._authorized(self._create_job))
        router.add_post("/api/1to1/jobs/{id}/assignlist", self._authorized(self._assign_list))
        router.add_post("/api/v2/media", self._authorized(self._create_media))

    async def _token_auth(self, request: web.Request) -> web.Response:
        if request.content_type != "application/json":
            return _error("Content-Type must be application/json")
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error("body must be JSON")
        if not isinstance(body, dict) or (body.get("email"), body.get("password")) != self.credentials:
            return _error("Unable to log in with provided credentials.", key="Error")
        return web.json_response(
            {
                "token": self._issue_token(),
                "root_accounts": sorted(self.accounts),
                "user": {
                    "first_name": "Sandbox",
                    "last_name": "User",
                    "email": SANDBOX_EMAIL,
                    "user_id": 1,
                    "user_type": "USER",
                    "local_timezone": "US/Central",
                    "identities": [],
                },
            }
        )

    def _authorized(self, handler: Any) -> Any:
        async def check(request: web.Request) -> web.StreamResponse:
            refusal = self._auth_refusal(request.headers.get("Authorization"))
            if refusal is not None:
                return _error(refusal, status=401, key="message")
            with self._lock:
                canned = self._canned.get((request.method, request.path))
            if canned is not None:
                return web.json_response(canned[1], status=canned[0])
            response: web.StreamResponse = await handler(request)
            return response

        return check

    async def _upload_list(self, request: web.Request) -> web.Response:
        parsed = await _multipart(request)
        if parsed is None:
            return _error("file is a required parameter (multipart/form-data)")
        form, files = parsed
        problem = rules.upload_form_error(form)
        if problem is None and "file" not in files:
            problem = "file is a required parameter"
        if problem is not None:
            return _error(problem)
        filename, content, _ = files["file"]
        rows, problem = rules.phone_list_rows(filename, content, form.get("list_map"))
        if problem is not None:
            return _error(problem, key="message")
        entry = self._new_list(form["account"], form["list_name"], rows)
        digest = hashlib.sha256(content).hexdigest()[:16]
        self.record_side_effect(
            "list_uploaded",
            f"{entry.account}:{entry.list_name}:{digest}",
            token=entry.token,
            rows=rows,
            form=form,
        )
        data = {
            "account_id": entry.account,
            "token": entry.token,
            "is_mapped_list": int("list_map" in form),
            "list_name": entry.list_name,
            "list_state": "PENDING",
            "pending_list_id": entry.pending_list_id,
            "split_states": int(form.get("split_states", "0")),
            "split_timezones": int(form.get("split_timezones", "1")),
            "suppress_cell_phones": int(form.get("suppress_cell_phones", "0")),
            "uploaded_by": "Sandbox User",
            "uploaded_date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "use_nat_dnc": int(form.get("use_nat_dnc", "0")),
        }
        return web.json_response({"Data": data}, status=201)

    async def _check_status(self, request: web.Request) -> web.Response:
        with self._lock:
            entry = self.lists.get(request.match_info["token"])
        if entry is None:
            return _error("Phone list not found")
        state, list_id = self._list_state(entry)
        data: dict[str, Any] = {"list_state": state}
        if list_id is not None:
            data["list_id"] = list_id
        return web.json_response({"Data": data})

    async def _create_job(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        problem = rules.job_error(body, self.accounts)
        if problem is not None:
            return _error(problem, key="message")
        job = SimJob(self._new_job_id(), body["account_id"], body)
        with self._lock:
            self.jobs[job.id] = job
        self.record_side_effect("job_created", f"{job.account_id}:{body['name']}", job_id=job.id)
        return web.json_response(job.answer(), status=201)

    async def _assign_list(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        list_id = body.get("list_id") if isinstance(body, dict) else None
        if isinstance(list_id, bool) or not isinstance(list_id, int):
            return _error("list_id is required (an integer)")
        with self._lock:
            job = self.jobs.get(request.match_info["id"])
            lists = list(self.lists.values())
        # list_id is given when a list turns ACTIVE, whether or not someone asked.
        known = [e for e in lists if self._list_state(e)[1] == list_id]
        if job is None:
            return _error("Job not found", key="Error")
        if not known or known[0].account != job.account_id:
            return _error("Phone list not found or not active")
        with self._lock:
            job.phone_lists.append(list_id)  # appends, even a list the job already has
        self.record_side_effect("list_assigned", f"{job.id}:{list_id}", job_id=job.id, list_id=list_id)
        return web.json_response(job.assign_answer())

    async def _create_media(self, request: web.Request) -> web.Response:
        parsed = await _multipart(request)
        if parsed is None:
            return _error("initial_file_upload is a required parameter (multipart/form-data)")
        form, files = parsed
        problem = rules.media_form_error(form, self.accounts)
        if problem is None and "initial_file_upload" not in files:
            problem = "initial_file_upload is a required parameter"
        if problem is not None:
            return _error(problem)
        filename, content, _ = files["initial_file_upload"]
        mime = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        kind = {"image": "IMAGE", "video": "VIDEO"}.get(mime.split("/")[0])
        if kind is None:
            return _error(f"Unsupported media type {mime}")
        title = form.get("title", filename)
        media = {
            "account_id": form["account_id"],
            "identity_id": form["identity_id"],
            "media_id": secrets.token_hex(16),
            "media_type": kind,
            "mime_type": mime,
            "size_bytes": len(content),
            "title": title,
            "status": "ACTIVE",
            "error": "",
            "preview_url": f"{self.base_url}/media/preview",
            "thumbnail_url": f"{self.base_url}/media/thumbnail",
        }
        if "corrupt" in f"{title} {filename}".lower():
            media["status"] = "ERROR"
            media["error"] = "Error encountered attempting to process this media object."
        else:
            digest = hashlib.sha256(content).hexdigest()[:16]
            self.record_side_effect(
                "media_created", f"{form['account_id']}:{title}:{digest}", media_id=media["media_id"]
            )
        with self._lock:
            self.media[str(media["media_id"])] = media
        return web.json_response(media, status=201)

    # -- state ------------------------------------------------------------
    def _issue_token(self) -> str:
        now = time.time()
        header = _b64(orjson.dumps({"alg": "HS256", "typ": "JWT"}))
        # No exp: the document never shows one. The lifetime is kept server side.
        claims = {"user_id": 1, "username": self.credentials[0], "orig_iat": int(now)}
        claims["jti"] = secrets.token_hex(8)  # two logins in one second get different tokens
        if self.exp_claim:
            claims["exp"] = int(now + self.token_lifetime)
        signing_input = f"{header}.{_b64(orjson.dumps(claims))}"
        signature = hmac.new(self._secret, signing_input.encode(), hashlib.sha256).digest()
        token = f"{signing_input}.{_b64(signature)}"
        with self._lock:
            self._issued.append(token)
            self._expires_at[token] = now + self.token_lifetime
        return token

    def _auth_refusal(self, header: str | None) -> str | None:
        if not header:
            return "Authentication credentials were not provided."
        scheme, _, token = header.partition(" ")
        if scheme != "JWT" or not token or " " in token:
            return "Invalid Authorization header. Expected: JWT <token>."
        parts = token.split(".")
        if len(parts) != 3:
            return "Error decoding signature."
        expected = hmac.new(self._secret, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
        try:
            valid = hmac.compare_digest(expected, _unb64(parts[2]))
            claims = orjson.loads(_unb64(parts[1]))
        except (ValueError, orjson.JSONDecodeError):
            return "Error decoding signature."
        if not valid:
            return "Error decoding signature."
        with self._lock:
            expired = token in self._expired or self._expires_at.get(token, 0.0) <= time.time()
        if expired or not isinstance(claims, dict):
            return "Signature has expired."
        return None

    def _new_list(self, account: str, name: str, rows: int, token: str | None = None) -> SimList:
        entry = SimList(
            token or secrets.token_hex(16), account, name, next(self._ids), rows, time.monotonic()
        )
        with self._lock:
            self.lists[entry.token] = entry
        return entry

    def _list_state(self, entry: SimList) -> tuple[str, int | None]:
        elapsed = time.monotonic() - entry.uploaded_at
        if entry.list_name.startswith("NEVER-ACTIVE") or elapsed < self.list_active_after / 2:
            return "PENDING", None
        if elapsed < self.list_active_after:
            return "PROCESSING", None
        if entry.list_name.startswith("FAIL-"):
            return "ERROR", None
        with self._lock:
            if entry.list_id is None:
                entry.list_id = 100000 + entry.pending_list_id
        return "ACTIVE", entry.list_id

    def _new_job_id(self) -> str:
        return secrets.token_urlsafe(15)[:20]


async def _json_body(request: web.Request) -> Any:
    if request.content_type != "application/json":
        return None
    try:
        return orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return None


async def _multipart(
    request: web.Request,
) -> tuple[dict[str, str], dict[str, tuple[str, bytes, str]]] | None:
    """(text fields, files as (filename, content, content type)), or None when not multipart.

    Parsed from the body the base class already read (aiohttp's own reader
    needs the unread stream).
    """
    if request.content_type != "multipart/form-data":
        return None
    raw = await request.read()
    head = f"Content-Type: {request.headers['Content-Type']}\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + raw)
    if not isinstance(message, EmailMessage) or not message.is_multipart():
        return None
    form: dict[str, str] = {}
    files: dict[str, tuple[str, bytes, str]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        content = part.get_payload(decode=True)
        data = content if isinstance(content, bytes) else b""
        filename = part.get_filename()
        if filename is not None:
            files[name] = (filename, data, part.get_content_type())
        else:
            form[name] = data.decode("utf-8", "replace")
    return form, files


def sandbox_account(sim: PeerlySimulator) -> dict[str, Any]:
    """Account settings that point at ``sim``."""
    return {
        "base_url": sim.api_url,
        "email": SANDBOX_EMAIL,
        "password": SANDBOX_PASSWORD,
        "account_id": SANDBOX_ACCOUNT_ID,
        "list_poll_seconds": 1.0,
    }


DEMO_JOB_ID = "1M93TFzJYm7e5xNNFlrr"
DEMO_LIST_ID = 123456
DEMO_LIST_TOKEN = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
DEMO_ACCOUNTS = (SANDBOX_ACCOUNT_ID, "88889754")


def demo_simulator(list_active_after: float) -> PeerlySimulator:
    """A simulator where the commands' example payloads work: their accounts, job and list exist."""
    sim = PeerlySimulator(accounts=DEMO_ACCOUNTS, list_active_after=list_active_after)
    sim.add_job("Demo job", job_id=DEMO_JOB_ID)
    sim.add_active_list(token=DEMO_LIST_TOKEN, list_id=DEMO_LIST_ID)
    return sim


async def start_sandbox(list_active_after: float = 3.0) -> Sandbox:
    """Start the simulator in this event loop on 127.0.0.1 (any free port)."""
    sim = demo_simulator(list_active_after)
    await sim.start("127.0.0.1", 0)
    return Sandbox(account=sandbox_account(sim), stop=sim.stop)


async def serve(host: str = "127.0.0.1", port: int = 0, list_active_after: float = 3.0) -> None:
    """Run the simulator until cancelled (``switchboard sandbox peerly --port N``).

    Prints one line to stderr: the account settings that point at it.
    """
    sim = demo_simulator(list_active_after)
    await sim.start(host, port)
    print(orjson.dumps(sandbox_account(sim)).decode(), file=sys.stderr, flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await sim.stop()
