"""``switchboard pause|resume|cancel``: operator controls for texting.

Each writes the shared store (every worker picks it up within a second) and
publishes a control event (``control.paused``, ``control.resumed``,
``control.cancelled``) on ``switchboard.events`` so dashboards and other
services see who stopped what.
"""

from __future__ import annotations

import asyncio
import getpass
import time
import uuid
from typing import Any

import click
import orjson
import pika

from worker import events, topology
from worker.brokers import blocking_connection
from worker.config import load_settings
from worker.controls import ALL_ACCOUNTS, FOREVER, cancel_key, pause_key
from worker.store import Stores, open_stores


async def _stores() -> Stores:
    settings = load_settings()
    return await open_stores(
        settings.store_url.get_secret_value(), retention_seconds=settings.retention_days * 86400
    )


def _publish_control(action: str, details: dict[str, Any]) -> None:
    """Publish ``control.<action>``; a broker outage only warns (the store already has it)."""
    event = {
        "event_id": str(uuid.uuid4()),
        "type": "control",
        "status": action,
        "occurred_at": events.utc_iso(),
        "by": getpass.getuser(),
        **details,
    }
    try:
        connection = blocking_connection(load_settings().amqp_url.get_secret_value())
    except pika.exceptions.AMQPError as exc:
        click.echo(f"warning: control event not published ({exc.__class__.__name__})", err=True)
        return
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(
            topology.EVENTS_EXCHANGE,
            f"control.{action}",
            orjson.dumps(event),
            pika.BasicProperties(
                content_type="application/json", delivery_mode=2, message_id=event["event_id"]
            ),
        )
    finally:
        connection.close()


def _scope(vendor: str | None, account: str | None, command_type: str | None) -> tuple[str, str]:
    """(account, label) for a pause: ``--vendor`` alone means every account of that vendor."""
    if vendor is not None:
        from handlers import build_registry

        registry = build_registry()

        if vendor not in registry.vendors:
            known = ", ".join(sorted(registry.vendors))
            raise click.BadParameter(f"unknown vendor {vendor!r} (known: {known})", param_hint="--vendor")
        if command_type is not None and command_type not in registry.types_of(vendor):
            raise click.BadParameter(f"{command_type!r} is not a {vendor} command type", param_hint="--type")
    resolved = account or (ALL_ACCOUNTS if vendor else "default")
    scope = f"{vendor}/{resolved}" if vendor else resolved
    return resolved, f"{scope}/{command_type or '*'}"


async def _set_pause(account: str, command_type: str | None, paused: bool, vendor: str | None = None) -> bool:
    stores = await _stores()
    try:
        if stores.controls is None:
            raise click.ClickException(f"the {stores.backend} store does not support operator controls")
        key = pause_key(account, command_type, vendor)
        if paused:
            await stores.controls.put_control(key, {"since": time.time()}, time.time() + FOREVER)
            return True
        return await stores.controls.remove_control(key)
    finally:
        await stores.close()


_ACCOUNT_HELP = "Account alias (default: `default`; with --vendor: every account of that vendor)."


@click.command()
@click.option("--vendor", help="Only this vendor (default: the account on every vendor).")
@click.option("--account", help=_ACCOUNT_HELP)
@click.option("--type", "command_type", help="Only this command type (default: every type).")
def pause(vendor: str | None, account: str | None, command_type: str | None) -> None:
    """Stop starting the account's (or vendor's) commands (they wait in the broker) until `resume`."""
    resolved, label = _scope(vendor, account, command_type)
    asyncio.run(_set_pause(resolved, command_type, True, vendor))
    _publish_control(
        "paused", {"vendor": vendor or "*", "account": resolved, "command_type": command_type or "*"}
    )
    click.echo(f"paused {label}: workers stop starting these within a second", err=True)


@click.command()
@click.option("--vendor", help="The vendor given to `pause`.")
@click.option("--account", help=_ACCOUNT_HELP)
@click.option("--type", "command_type", help="The type given to `pause` (default: every type).")
def resume(vendor: str | None, account: str | None, command_type: str | None) -> None:
    """Resume what `pause` held (same options); waiting commands drain within the wait they are in."""
    resolved, label = _scope(vendor, account, command_type)
    removed = asyncio.run(_set_pause(resolved, command_type, False, vendor))
    if not removed:
        raise click.ClickException(f"{label} was not paused")
    _publish_control(
        "resumed", {"vendor": vendor or "*", "account": resolved, "command_type": command_type or "*"}
    )
    click.echo(f"resumed {label}", err=True)


async def _cancel(
    account: str, command_id: str, reason: str | None, retention: float
) -> tuple[str, dict[str, Any] | None]:
    stores = await _stores()
    try:
        if stores.controls is None:
            raise click.ClickException(f"the {stores.backend} store does not support operator controls")
        record = await stores.controls.peek(account, command_id)
        if record is not None and record["status"] == "done":
            return "finished", record
        if record is not None and record["status"] == "running":
            return "running", record
        value = {"reason": reason or "", "cancelled_at": events.utc_iso(), "by": getpass.getuser()}
        await stores.controls.put_control(cancel_key(account, command_id), value, time.time() + retention)
        return "cancelled", record
    finally:
        await stores.close()


@click.command()
@click.argument("command_id")
@click.option("--account", default="default", show_default=True)
@click.option("--reason", help="Why; carried in the command's failed event.")
def cancel(command_id: str, account: str, reason: str | None) -> None:
    """Cancel a command that has not started: it ends failed with code `cancelled`."""
    settings = load_settings()
    outcome, record = asyncio.run(_cancel(account, command_id, reason, settings.retention_days * 86400))
    if outcome == "finished":
        assert record is not None
        status = (record.get("event") or {}).get("status", "done")
        raise click.ClickException(f"{command_id} already finished ({status}); nothing to cancel")
    if outcome == "running":
        assert record is not None
        started = (
            events.utc_iso(record["attempt_started_at"]) if record.get("attempt_started_at") else "unknown"
        )
        raise click.ClickException(
            f"{command_id} already started (attempt began {started}); it will not be interrupted"
        )
    _publish_control("cancelled", {"account": account, "command_id": command_id, "reason": reason or ""})
    waiting = " (it waits for a retry or a delay)" if record is not None else ""
    click.echo(f"cancelled {command_id}{waiting}: it ends failed/cancelled when its turn comes", err=True)
