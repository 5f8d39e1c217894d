"""``switchboard suppressions``: the opt-out list every worker checks before texting.

Numbers are stored in E.164, per account. The list moves in and out as CSV
with the columns ``number,reason,source,created_at,account`` (``created_at``
in ISO 8601 UTC), so a team can bring the opt-outs it already has::

    switchboard suppressions import optouts.csv --account east --dry-run
    switchboard suppressions export --account east optouts.csv

On import only ``number`` is required: a file without a header row is read as
``number[,reason[,source[,created_at]]]``; an ``account`` column, where filled
in, wins over ``--account``. National numbers ("(888) 555-3333") need
``--region``. Bad rows are reported with their line numbers and skipped; the
good ones are imported (an opt-out left out is a text someone told us not to
send) and the command exits 1 so a script notices.
"""

from __future__ import annotations

import asyncio
import csv
import io
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar, runtime_checkable

import click
import orjson
import phonenumbers

from worker.config import ConfigError, load_settings
from worker.events import utc_iso
from worker.phone_numbers import is_valid
from worker.store import Stores, SuppressionList, open_stores

COLUMNS = ("number", "reason", "source", "created_at", "account")
DEFAULT_ACCOUNT = "default"
T = TypeVar("T")


@runtime_checkable
class BulkSuppressionList(Protocol):
    """A suppression list that can add many rows in one go (PostgreSQL)."""

    async def add_many(self, rows: Iterable[tuple[str, str, str, str, float]]) -> None: ...


@dataclass(frozen=True)
class Entry:
    account: str
    number: str
    reason: str
    source: str
    created_at: float


def normalise(value: str, region: str | None = None) -> str:
    """``value`` in E.164; ValueError saying why not."""
    text = value.strip()
    if not text:
        raise ValueError("no number")
    if not text.startswith("+") and region is None:
        raise ValueError(f"{text!r} is not international (+...); pass --region to read national numbers")
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        raise ValueError(f"{text!r} is not a phone number") from None
    if not is_valid(number):
        raise ValueError(f"{text!r} is not a valid phone number")
    formatted: str = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return formatted


def parse_time(value: str, default: float) -> float:
    """ISO 8601 (no zone = UTC) or Unix seconds; ``default`` when empty."""
    text = value.strip()
    if not text:
        return default
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"created_at {text!r} is not an ISO 8601 time") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def read_csv(
    stream: IO[str], *, account: str, region: str | None, source: str, now: float
) -> tuple[list[Entry], list[str]]:
    """The entries of a CSV file (duplicates dropped) and one message per bad line."""
    reader = csv.reader(stream)
    entries: dict[tuple[str, str], Entry] = {}
    problems: list[str] = []
    header: list[str] = list(COLUMNS[:4])
    for index, row in enumerate(reader):
        if index == 0 and row and row[0].strip().lower() == "number":
            header = [name.strip().lower() for name in row]
            unknown = set(header) - set(COLUMNS)
            if unknown:
                problems.append(
                    f"line 1: unknown column(s) {', '.join(sorted(unknown))}; expected {','.join(COLUMNS)}"
                )
                return [], problems
            continue
        if not any(cell.strip() for cell in row):
            continue
        fields = dict(zip(header, row, strict=False))
        try:
            entry = Entry(
                account=fields.get("account", "").strip() or account,
                number=normalise(fields.get("number", ""), region),
                reason=fields.get("reason", "").strip() or "opt-out",
                source=fields.get("source", "").strip() or source,
                created_at=parse_time(fields.get("created_at", ""), now),
            )
        except ValueError as exc:
            problems.append(f"line {reader.line_num}: {exc}")
            continue
        entries.setdefault((entry.account, entry.number), entry)
    return list(entries.values()), problems


def write_csv(stream: IO[str], rows: Iterable[dict[str, Any]]) -> int:
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(COLUMNS)
    count = 0
    for row in rows:
        writer.writerow(
            [row["number"], row["reason"], row["source"], utc_iso(row["created_at"]), row["account"]]
        )
        count += 1
    return count


async def add_entries(opt_outs: SuppressionList, entries: list[Entry]) -> None:
    if isinstance(opt_outs, BulkSuppressionList):
        await opt_outs.add_many((e.account, e.number, e.reason, e.source, e.created_at) for e in entries)
        return
    for e in entries:
        await opt_outs.add(e.account, e.number, reason=e.reason, source=e.source, now=e.created_at)


# -- the commands ---------------------------------------------------------------
def _with_stores(action: Callable[[Stores], Awaitable[T]]) -> T:
    """Run ``action`` on the configured store (SWITCHBOARD_STORE_URL), closing it after."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        for line in exc.lines:
            click.echo(f"config error: {line}", err=True)
        sys.exit(2)

    async def run() -> T:
        url = settings.store_url.get_secret_value()
        try:
            stores = await open_stores(url, retention_seconds=settings.retention_days * 86400)
        except Exception as exc:  # unreachable server, unknown database, bad URL: one line, no traceback
            raise click.ClickException(f"cannot open the store: {exc}") from None
        try:
            return await action(stores)
        finally:
            await stores.close()

    return asyncio.run(run())


def _number(value: str, region: str | None) -> str:
    try:
        return normalise(value, region)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="NUMBER") from None


_account = click.option("--account", default=DEFAULT_ACCOUNT, show_default=True, help="Vendor account alias.")
_region = click.option("--region", help="Read national numbers as this country (ISO code, e.g. US).")


@click.group()
def suppressions() -> None:
    """The suppression list: numbers that opted out, never texted again."""


@suppressions.command("list")
@click.option("--account", help="Only this account (default: every account).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_command(account: str | None, as_json: bool) -> None:
    """List suppressed numbers."""
    rows = _with_stores(lambda stores: stores.suppressions.list(account))
    if as_json:
        shown = [{**row, "created_at": utc_iso(row["created_at"])} for row in rows]
        click.echo(orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode())
    else:
        for row in rows:
            click.echo(
                "\t".join(
                    (row["account"], row["number"], row["reason"], row["source"], utc_iso(row["created_at"]))
                )
            )
    click.echo(f"{len(rows)} suppressed number(s)", err=True)


@suppressions.command()
@click.argument("number")
@_account
@click.option("--reason", default="opt-out", show_default=True)
@click.option("--source", default="cli", show_default=True, help="Where the opt-out came from.")
@_region
def add(number: str, account: str, reason: str, source: str, region: str | None) -> None:
    """Suppress NUMBER: no text is sent to it from ACCOUNT."""
    e164 = _number(number, region)
    _with_stores(
        lambda stores: stores.suppressions.add(account, e164, reason=reason, source=source, now=time.time())
    )
    click.echo(f"suppressed {e164} for account {account}", err=True)


@suppressions.command()
@click.argument("number")
@_account
@_region
def remove(number: str, account: str, region: str | None) -> None:
    """Take NUMBER off the list (it opted back in). Exit 1 if it was not on it."""
    e164 = _number(number, region)
    if not _with_stores(lambda stores: stores.suppressions.remove(account, e164)):
        raise click.ClickException(f"{e164} is not suppressed for account {account}")
    click.echo(f"removed {e164} from account {account}", err=True)


@suppressions.command("import")
@click.argument("file", type=click.File("r", encoding="utf-8-sig"))
@click.option(
    "--account", default=DEFAULT_ACCOUNT, show_default=True, help="For rows with no account column."
)
@click.option("--source", default="import", show_default=True, help="For rows with no source column.")
@_region
@click.option("--dry-run", is_flag=True, help="Check the file and report; import nothing.")
def import_command(file: IO[str], account: str, source: str, region: str | None, dry_run: bool) -> None:
    """Add the numbers of a CSV file (``-`` for stdin); see ``export`` for the columns."""
    entries, problems = read_csv(file, account=account, region=region, source=source, now=time.time())
    for problem in problems:
        click.echo(f"{_name(file)}: {problem}", err=True)
    if dry_run:
        click.echo(
            f"dry run: {len(entries)} number(s) would be imported, {len(problems)} bad line(s)", err=True
        )
    elif entries:
        _with_stores(lambda stores: add_entries(stores.suppressions, entries))
        click.echo(f"imported {len(entries)} number(s), skipped {len(problems)} bad line(s)", err=True)
    if problems:
        sys.exit(1)


@suppressions.command()
@click.option("--account", help="Only this account (default: every account).")
@click.argument("file", default="-", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path))
def export(account: str | None, file: Path) -> None:
    """Write the list as CSV to FILE (default: stdout)."""
    rows = _with_stores(lambda stores: stores.suppressions.list(account))
    if str(file) == "-":
        count = write_csv(sys.stdout, rows)
    else:
        buffer = io.StringIO()
        count = write_csv(buffer, rows)
        file.write_text(buffer.getvalue(), encoding="utf-8")
    click.echo(f"exported {count} number(s)", err=True)


def _name(file: IO[str]) -> str:
    name = getattr(file, "name", "-")
    return name if isinstance(name, str) else "-"
