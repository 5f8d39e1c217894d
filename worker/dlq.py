"""``switchboard dlq``: look at, replay and purge ``switchboard.dead``.

Each dead letter is the original message plus ``x-switchboard-*`` headers that
say why it is there (status, error, the event's id, the original routing key).
Listing takes messages without acking and gives them back with ``basic.nack``
(requeue), which puts them back in order and, on RabbitMQ 4.3+, does not count
as a failed delivery; ``switchboard.dead`` has no delivery limit on any
version, so looking can never drop a dead letter. Replay republishes the
original to ``switchboard.commands``: with the same id the idempotency store decides (a command that already failed
gets its stored event again); ``--new-id`` runs it again on purpose.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import click
import orjson
import pika
from pika.adapters.blocking_connection import BlockingChannel

from worker import topology
from worker.brokers import blocking_connection
from worker.config import load_settings
from worker.outbox import (
    H_DEAD_AT,
    H_DEAD_ERROR,
    H_DEAD_EVENT_ID,
    H_DEAD_ROUTING_KEY,
    H_DEAD_STATUS,
    RUNTIME_HEADERS,
)


@dataclass
class DeadLetter:
    delivery_tag: int
    properties: pika.BasicProperties
    body: bytes

    @property
    def headers(self) -> dict[str, Any]:
        return dict(self.properties.headers or {})

    def summary(self) -> dict[str, Any]:
        headers = self.headers
        error_raw = headers.get(H_DEAD_ERROR)
        error = orjson.loads(error_raw) if isinstance(error_raw, str | bytes) else None
        if error is None and "x-death" in headers:
            death = headers["x-death"][0]
            error = {
                "code": str(death.get("reason")),
                "message": f"dead-lettered by the broker from {death.get('queue')}",
            }
        return {
            "message_id": self.properties.message_id,
            "routing_key": headers.get(H_DEAD_ROUTING_KEY) or _broker_routing_key(headers),
            "status": headers.get(H_DEAD_STATUS, "failed"),
            "error": error,
            "event_id": headers.get(H_DEAD_EVENT_ID),
            "dead_at": headers.get(H_DEAD_AT),
            "size": len(self.body),
        }


def _broker_routing_key(headers: dict[str, Any]) -> str | None:
    deaths = headers.get("x-death") or []
    if deaths and deaths[0].get("routing-keys"):
        key: str = deaths[0]["routing-keys"][0]
        return key
    return None


@contextmanager
def _channel() -> Iterator[BlockingChannel]:
    settings = load_settings()
    connection = blocking_connection(settings.amqp_url.get_secret_value())
    try:
        yield connection.channel()
    finally:
        if connection.is_open:
            connection.close()


def _give_back(channel: BlockingChannel) -> None:
    """Return every letter taken and not acked, explicitly, before the channel closes.

    ``basic.nack`` with requeue: RabbitMQ 4.3+ does not count it as a failed
    delivery (``basic.reject`` and a closed channel may be), so looking at dead
    letters never moves them toward a delivery limit. ``switchboard.dead`` has
    no limit anyway (:func:`worker.topology.for_broker`).
    """
    if channel.is_open:
        channel.basic_nack(delivery_tag=0, multiple=True, requeue=True)


def _take(channel: BlockingChannel, limit: int) -> list[DeadLetter]:
    letters: list[DeadLetter] = []
    while len(letters) < limit:
        method, properties, body = channel.basic_get(topology.DEAD_QUEUE, auto_ack=False)
        if method is None:
            break
        letters.append(DeadLetter(method.delivery_tag, properties, body))
    return letters


def _matches(letter: DeadLetter, ids: tuple[str, ...]) -> bool:
    return letter.properties.message_id in ids or letter.headers.get(H_DEAD_EVENT_ID) in ids


def _emit(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        click.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return
    for row in rows:
        error = row.get("error") or {}
        click.echo(
            f"{row['message_id'] or '-':40} {row['routing_key'] or '-':22} {row['status']:9} {error.get('code', '-')}: {error.get('message', '')}"
        )


@click.group()
def dlq() -> None:
    """The dead-letter queue switchboard.dead."""


@dlq.command("list")
@click.option("--limit", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def dlq_list(limit: int, as_json: bool) -> None:
    """List dead letters (oldest first) without removing them."""
    with _channel() as channel:
        letters = _take(channel, limit)
        _give_back(channel)
    _emit([letter.summary() for letter in letters], as_json)
    if not as_json:
        click.echo(f"{len(letters)} dead letter(s) shown", err=True)


@dlq.command("show")
@click.argument("message_id")
@click.option("--limit", default=10000, show_default=True, help="How many dead letters to look through.")
def dlq_show(message_id: str, limit: int) -> None:
    """Show one dead letter (by command id or event id): reason, headers and body."""
    with _channel() as channel:
        found = [letter for letter in _take(channel, limit) if _matches(letter, (message_id,))]
        _give_back(channel)
    if not found:
        raise click.ClickException(f"no dead letter with id {message_id!r}")
    for letter in found:
        try:
            body: Any = orjson.loads(letter.body)
        except orjson.JSONDecodeError:
            body = letter.body.decode("utf-8", "replace")
        row = letter.summary()
        row["headers"] = {k: v for k, v in letter.headers.items() if k != H_DEAD_ERROR}
        row["body"] = body
        click.echo(orjson.dumps(row, option=orjson.OPT_INDENT_2, default=str).decode())


@dlq.command("replay")
@click.argument("ids", nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter.")
@click.option(
    "--new-id", is_flag=True, help="Give each replayed command a new id, so it runs again on purpose."
)
@click.option("--dry-run", is_flag=True, help="Say what would be replayed; change nothing.")
@click.option("--yes", is_flag=True, help="Do it without asking.")
@click.option("--limit", default=10000, show_default=True)
def dlq_replay(
    ids: tuple[str, ...], replay_all: bool, new_id: bool, dry_run: bool, yes: bool, limit: int
) -> None:
    """Publish dead letters again to switchboard.commands and remove them from the queue."""
    if not ids and not replay_all:
        raise click.UsageError("name the ids to replay, or --all")
    with _channel() as channel:
        letters = [letter for letter in _take(channel, limit) if replay_all or _matches(letter, ids)]
        if not letters:
            raise click.ClickException("nothing to replay")
        if dry_run:
            _give_back(channel)
            _emit([letter.summary() for letter in letters], False)
            click.echo(f"would replay {len(letters)} message(s)", err=True)
            return
        if not yes and not click.confirm(f"replay {len(letters)} message(s)?", err=True):
            raise click.Abort()
        channel.confirm_delivery()
        for letter in letters:
            body, properties, routing_key = _replayable(letter, new_id)
            channel.basic_publish(topology.COMMANDS_EXCHANGE, routing_key, body, properties)
            channel.basic_ack(letter.delivery_tag)
            click.echo(f"replayed {letter.properties.message_id} -> {properties.message_id} ({routing_key})")
        _give_back(channel)
    click.echo(f"replayed {len(letters)} message(s)", err=True)


def _replayable(letter: DeadLetter, new_id: bool) -> tuple[bytes, pika.BasicProperties, str]:
    headers = {
        k: v
        for k, v in letter.headers.items()
        if k not in RUNTIME_HEADERS and not k.startswith("x-death") and k != "x-delivery-count"
    }
    routing_key = letter.summary()["routing_key"] or ""
    body = letter.body
    message_id = letter.properties.message_id
    if new_id:
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise click.ClickException(f"{message_id}: body is not JSON; cannot give it a new id") from exc
        if not isinstance(document, dict):
            raise click.ClickException(f"{message_id}: body is not a command object; cannot give it a new id")
        message_id = f"{document.get('id', 'replay')}:replay:{uuid.uuid4().hex[:12]}"[:128]
        document["id"] = message_id
        body = orjson.dumps(document)
    properties = pika.BasicProperties(
        content_type=letter.properties.content_type,
        delivery_mode=2,
        message_id=message_id,
        correlation_id=letter.properties.correlation_id,
        reply_to=letter.properties.reply_to,
        headers=headers or None,
    )
    return body, properties, routing_key


@dlq.command("purge")
@click.option("--dry-run", is_flag=True)
@click.option("--yes", is_flag=True, help="Do it without asking.")
def dlq_purge(dry_run: bool, yes: bool) -> None:
    """Delete every dead letter."""
    with _channel() as channel:
        count = channel.queue_declare(topology.DEAD_QUEUE, passive=True).method.message_count
        if dry_run:
            click.echo(f"would purge {count} dead letter(s)", err=True)
            return
        if not yes and not click.confirm(f"delete {count} dead letter(s)?", err=True):
            raise click.Abort()
        purged = channel.queue_purge(topology.DEAD_QUEUE).method.message_count
    click.echo(f"purged {purged} dead letter(s)", err=True)
