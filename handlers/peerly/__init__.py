"""Peerly (P2P political texting): account, client, commands, simulator.

Commands: ``upload_list`` (unsafe to repeat), ``check_list_status`` (safe),
``create_job`` (unsafe), ``assign_list`` (safe), ``create_media`` (unsafe).
See docs/commands-peerly.md.
"""

from handlers.peerly import jobs, lists, media
from handlers.peerly.client import PeerlyClient, make_client
from handlers.peerly.sandbox import start_sandbox
from handlers.peerly.settings import PeerlyAccount
from worker.registry import VendorSpec, registry

registry.vendor(
    VendorSpec(
        name="peerly", account_model=PeerlyAccount, make_client=make_client, start_sandbox=start_sandbox
    )
)

__all__ = ["PeerlyAccount", "PeerlyClient", "jobs", "lists", "media"]
