"""Pidj (business SMS), API version 2020.

Commands are registered by the modules imported below; the vendor itself
(account settings, client, simulator, inbound webhooks) here.

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

from typing import Any

from handlers.pidj import catalog, contacts, messages, users
from handlers.pidj.client import PidjClient
from handlers.pidj.sandbox import start_sandbox
from handlers.pidj.settings import PidjAccount
from handlers.pidj.webhooks import webhook_app
from worker.registry import VendorSpec, registry
from worker.vendor_http import VendorHTTP


def make_client(account: Any, http: VendorHTTP) -> PidjClient:
    """One client per configured account, on the runtime's shared HTTP session."""
    if not isinstance(account, PidjAccount):
        account = PidjAccount.model_validate(account)
    return PidjClient(account, http)


VENDOR_SPEC = registry.vendor(
    VendorSpec(
        name="pidj",
        account_model=PidjAccount,
        make_client=make_client,
        start_sandbox=start_sandbox,
        webhook_app=webhook_app,
    )
)

__all__ = ["VENDOR_SPEC", "PidjAccount", "PidjClient", "catalog", "contacts", "messages", "users"]
