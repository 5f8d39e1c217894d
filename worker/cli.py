"""``switchboard``: run the worker and operate it.

Data goes to stdout (``--json`` for machines), messages to stderr; a failure
exits non-zero. Destructive verbs need ``--yes`` and offer ``--dry-run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path
from typing import Any

import click
import orjson

import schemas as schema_files
from worker import collector, control_cli
from worker import dlq as dead_letters
from worker.config import ConfigError, Settings, load_settings, redacted
from worker.logging import configure
from worker.registry import Registry
from worker.suppressions import suppressions


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        for line in exc.lines:
            click.echo(f"config error: {line}", err=True)
        sys.exit(2)


def _registry() -> Registry:
    """The composition root's registry: the one place the CLI learns which vendors exist."""
    from handlers import build_registry

    return build_registry()


def _print_json(value: Any) -> None:
    click.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


@click.group()
@click.version_option(package_name="switchboard")
def main() -> None:
    """Switchboard: SMS vendor commands from RabbitMQ, exactly once."""


@main.command()
@click.option(
    "--sandbox/--no-sandbox",
    default=None,
    help="Start the vendor simulators for vendors with no credentials.",
)
def run(sandbox: bool | None) -> None:
    """Run the worker until SIGTERM/SIGINT."""
    from worker.runtime import Runtime

    settings = _settings()
    if sandbox is not None:
        settings = settings.model_copy(update={"sandbox": sandbox})
    configure(settings.log_level, settings.log_format)
    try:
        registry = _registry()
        collector.tune(settings.gc_young_threshold)
        code = asyncio.run(Runtime(settings, registry).run())
    except ConfigError as exc:
        for line in exc.lines:
            click.echo(f"config error: {line}", err=True)
        sys.exit(2)
    sys.exit(code)


@main.command()
@click.option("--port", type=int, default=None, help="Port to listen on (default SWITCHBOARD_METRICS_PORT).")
def webhooks(port: int | None) -> None:
    """Serve inbound vendor webhooks (and /metrics) without consuming commands."""
    from worker.runtime import Runtime

    settings = _settings()
    if port is not None:
        settings = settings.model_copy(update={"metrics_port": port})
    configure(settings.log_level, settings.log_format)
    try:
        registry = _registry()
        collector.tune(settings.gc_young_threshold)
        code = asyncio.run(Runtime(settings, registry, consume=False, webhooks=True).run())
    except ConfigError as exc:  # an unknown SWITCHBOARD_* variable, a bad account: one line each
        for line in exc.lines:
            click.echo(f"config error: {line}", err=True)
        sys.exit(2)
    sys.exit(code)


@main.group()
def topology() -> None:
    """Exchanges and queues."""


@topology.command("declare")
@click.option("--json", "as_json", is_flag=True, help="Print what was declared as JSON.")
def topology_declare(as_json: bool) -> None:
    """Declare every exchange, queue and binding (idempotent)."""
    from worker import topology as topo
    from worker.amqp import Connection

    settings = _settings()
    registry = _registry()
    layout = topo.build(
        {v: registry.types_of(v) for v in registry.vendors}, delivery_limit=settings.delivery_limit
    )

    async def declare() -> list[str]:
        connection = await Connection.connect_any(
            settings.amqp_url.get_secret_value(), name="switchboard-cli"
        )
        try:

            async def reopen() -> Any:
                return await connection.channel()

            return await topo.declare(
                await connection.channel(), topo.for_broker(layout, connection.server_version), reopen
            )
        finally:
            await connection.close()

    for warning in asyncio.run(declare()):
        click.echo(f"warning: {warning}", err=True)
    if as_json:
        _print_json(
            {"exchanges": [e.name for e in layout.exchanges], "queues": [q.name for q in layout.queues]}
        )
    else:
        click.echo(f"declared {len(layout.exchanges)} exchanges and {len(layout.queues)} queues", err=True)


@main.command("schemas")
@click.argument("name", required=False)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write every schema as a file in this folder.",
)
@click.option("--asyncapi", is_flag=True, help="Print the AsyncAPI 3.0 document built from the same schemas.")
def schemas_command(name: str | None, out: Path | None, asyncapi: bool) -> None:
    """Print the JSON Schemas (one by NAME, or all), export them with --out, or --asyncapi."""
    if asyncapi:
        from worker import asyncapi as asyncapi_document

        click.echo(asyncapi_document.render(_registry()), nl=False)
        return
    names = ["command", "event", *schema_files.payload_names()]
    if name is not None:
        if name not in names:
            raise click.ClickException(f"no schema {name!r}; known: {', '.join(names)}")
        _print_json(schema_files.load(name))
        return
    if out is not None:
        (out / "payloads").mkdir(parents=True, exist_ok=True)
        for each in names:
            target = out / (f"{each}.json" if each in ("command", "event") else f"payloads/{each}.json")
            target.write_bytes(orjson.dumps(schema_files.load(each), option=orjson.OPT_INDENT_2) + b"\n")
        click.echo(f"wrote {len(names)} schemas to {out}", err=True)
        return
    _print_json({each: schema_files.load(each) for each in names})


@main.group()
def config() -> None:
    """Effective configuration."""


@config.command("show")
def config_show() -> None:
    """Print the effective settings, secrets redacted."""
    _print_json(redacted(_settings()))


main.add_command(dead_letters.dlq)
main.add_command(control_cli.pause)
main.add_command(control_cli.resume)
main.add_command(control_cli.cancel)
main.add_command(suppressions)


def _json_argument(value: str, option: str) -> Any:
    """``JSON`` or ``@path`` to a JSON file."""
    text = Path(value[1:]).read_text() if value.startswith("@") else value
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint=option) from None


@main.command()
@click.argument("command_type")
@click.option("--payload", required=True, help="The payload as JSON, or @file.json.")
@click.option("--id", "command_id", help="The command id (idempotency key); a new UUID by default.")
@click.option("--account", help="Configured vendor account alias (default: 'default').")
@click.option("--meta", help="Metadata echoed in events, as JSON.")
@click.option("--wait", is_flag=True, help="Wait for the terminal event and print it.")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait with --wait.")
def publish(
    command_type: str,
    payload: str,
    command_id: str | None,
    account: str | None,
    meta: str | None,
    wait: bool,
    timeout: float,
) -> None:
    """Publish a command (with publisher confirms). Exit 1 if --wait sees it fail."""
    from worker.client import CallTimeout, PublishError, Switchboard
    from worker.errors import SwitchboardError

    settings = _settings()
    body = _json_argument(payload, "--payload")
    metadata = _json_argument(meta, "--meta") if meta else None
    try:
        with Switchboard(settings.amqp_url.get_secret_value()) as client:
            if not wait:
                sent = client.send(command_type, body, id=command_id, account=account, meta=metadata)
                click.echo(f"published {command_type} {sent}", err=True)
                click.echo(sent)
                return
            event = client.call(
                command_type, body, id=command_id, account=account, meta=metadata, timeout=timeout
            )
    except SwitchboardError as exc:
        # Refused before publishing: the payload breaks its schema, or the type is unknown.
        raise click.ClickException(f"not published ({exc.code}): {exc.message}") from None
    except (PublishError, CallTimeout, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    _print_json(event)
    if event.get("status") != "succeeded":
        sys.exit(1)


@main.command()
@click.argument("vendor")
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0 in a container)."
)
@click.option("--port", type=int, default=0, help="Port to listen on (0 = any free port).")
def sandbox(vendor: str, host: str, port: int) -> None:
    """Run one vendor's simulator on its own (prints the settings that point at it)."""
    import importlib

    registry = _registry()
    if vendor not in registry.vendors:
        raise click.ClickException(f"no vendor {vendor!r}; known: {', '.join(sorted(registry.vendors))}")
    module = importlib.import_module(f"handlers.{vendor}.sandbox")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(module.serve(host, port))
