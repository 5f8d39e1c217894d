"""Pidj (business SMS), API version 2020.

``PIDJ`` is the vendor: account settings, client, commands (declared in the
modules below), simulator, inbound webhooks.

Readings of unclear places in the (OCR'd) document, kept in one place each:

- ``GET /contact_id}/{group_id}/check-consent`` is read as
  ``GET /contact/{contact_id}/{group_id}/check-consent`` (contacts.py).
- ``roles`` and ``groups`` are joined with ``|`` (client.build_form).
- HTTP 200 with ``status`` ``failure``/``error`` is a refusal (client.interpret).
- ``from_number``/``group_id`` and ``contact_id``/``to_number``: exactly one of
  each pair (rules.exactly_one).
- Webhooks named without a body (Opt Out, Opt In, ...) are read with the same
  envelope as the others (webhooks.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from handlers.pidj import catalog, contacts, messages, users
from handlers.pidj.client import PidjClient
from handlers.pidj.settings import PidjAccount
from worker.registry import Sandbox, Vendor

if TYPE_CHECKING:
    import aiohttp.web

    from worker.registry import WebhookContext
    from worker.vendor_http import VendorHTTP


def make_client(account: Any, http: VendorHTTP) -> PidjClient:
    """One client per configured account, on the runtime's shared HTTP session."""
    if not isinstance(account, PidjAccount):
        account = PidjAccount.model_validate(account)
    return PidjClient(account, http)


# The simulator and the webhook receiver are aiohttp servers: imported when used, so a
# publisher loading the command declarations (to validate with them) needs no server.
async def start_sandbox() -> Sandbox:
    """Start the Pidj simulator in this event loop (see ``handlers.pidj.sandbox``)."""
    from handlers.pidj import sandbox

    return await sandbox.start_sandbox()


def webhook_app(ctx: WebhookContext) -> aiohttp.web.Application:
    """The Pidj webhook receiver (see ``handlers.pidj.webhooks``)."""
    from handlers.pidj import webhooks

    return webhooks.webhook_app(ctx)


PIDJ: Vendor[PidjClient] = Vendor(
    name="pidj",
    account_model=PidjAccount,
    make_client=make_client,
    commands=(*messages.commands, *contacts.commands, *catalog.commands, *users.commands),
    start_sandbox=start_sandbox,
    webhook_app=webhook_app,
)

__all__ = ["PIDJ", "PidjAccount", "PidjClient", "catalog", "contacts", "messages", "users"]
