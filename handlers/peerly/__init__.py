"""Peerly (P2P political texting): account, client, commands, simulator.

Commands: ``upload_list`` (unsafe to repeat), ``check_list_status`` (safe),
``create_job`` (unsafe), ``assign_list`` (safe), ``create_media`` (unsafe).
See docs/commands-peerly.md.
"""

from __future__ import annotations

from handlers.peerly import jobs, lists, media
from handlers.peerly.client import PeerlyClient, make_client
from handlers.peerly.settings import PeerlyAccount
from worker.registry import Sandbox, Vendor


async def start_sandbox() -> Sandbox:
    """Start the Peerly simulator in this event loop (see ``handlers.peerly.sandbox``).

    Imported when used: it is an aiohttp server, which a publisher validating with the
    command declarations does not need."""
    from handlers.peerly import sandbox

    return await sandbox.start_sandbox()


PEERLY: Vendor[PeerlyClient] = Vendor(
    name="peerly",
    account_model=PeerlyAccount,
    make_client=make_client,
    commands=(*lists.commands, *jobs.commands, *media.commands),
    start_sandbox=start_sandbox,
)

__all__ = ["PEERLY", "PeerlyAccount", "PeerlyClient", "jobs", "lists", "media"]
