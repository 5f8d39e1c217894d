"""PostgreSQL schema, as numbered migrations applied once each, in order.

Every worker runs :func:`migrate` at start-up. All of it happens in one
transaction holding a transaction-scoped advisory lock, so when a fleet starts
at once the first worker migrates and the others wait, then find nothing to do;
a migration that fails rolls back whole. Migrations are append-only: never
edit one that has shipped, add the next version (additive, so workers still on
the previous release keep running during a rolling deploy).

Tables are prefixed ``switchboard_`` so the store can share a database, and
unqualified, so they land in the connection's ``search_path`` (put
``?search_path=<schema>`` on the URL to use a dedicated schema).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LOCK_KEY = 0x5357_4954_4348_0001
"""``pg_advisory_xact_lock`` key that serialises migrations (any constant unique to Switchboard)."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "idempotency records, suppression list, seen keys",
        """
        CREATE TABLE switchboard_commands (
            account text NOT NULL,
            command_id text NOT NULL,
            fingerprint text NOT NULL,
            status text NOT NULL CHECK (status IN ('running', 'pending', 'waiting', 'done')),
            attempts integer NOT NULL,
            first_attempt_at double precision NOT NULL,  -- Unix seconds, like every time here
            attempt_started_at double precision,
            lease_until double precision,
            state bytea,                                 -- continuation state (JSON), as the handler gave it
            event bytea,                                 -- the terminal event, byte for byte as published
            expires_at double precision NOT NULL,
            PRIMARY KEY (account, command_id)
        );
        CREATE INDEX switchboard_commands_expiry ON switchboard_commands (expires_at);
        CREATE TABLE switchboard_suppressions (
            account text NOT NULL,
            number text NOT NULL,
            reason text NOT NULL,
            source text NOT NULL,
            created_at double precision NOT NULL,
            PRIMARY KEY (account, number)
        );
        CREATE TABLE switchboard_seen (
            key text PRIMARY KEY,
            expires_at double precision NOT NULL
        );
        CREATE INDEX switchboard_seen_expiry ON switchboard_seen (expires_at);
        """,
    ),
    Migration(
        2,
        "operator controls (pause, cancel)",
        """
        CREATE TABLE switchboard_controls (
            key text PRIMARY KEY,
            value bytea NOT NULL,                        -- JSON
            expires_at double precision NOT NULL
        );
        CREATE INDEX switchboard_controls_expiry ON switchboard_controls (expires_at);
        """,
    ),
    Migration(
        3,
        "circuit breakers shared by the fleet",
        """
        -- IF NOT EXISTS: a database shared with builds that predate this migration may have
        -- dropped the migrations table but kept this one (test databases do).
        CREATE TABLE IF NOT EXISTS switchboard_breakers (
            key text PRIMARY KEY,                        -- the vendor
            open_until double precision NOT NULL,        -- the cool-down ends then
            probe_until double precision NOT NULL        -- a worker holds the one probe until then (0: none)
        );
        """,
    ),
)

LATEST = MIGRATIONS[-1].version


async def migrate(conn: Any, migrations: tuple[Migration, ...] = MIGRATIONS) -> list[int]:
    """Bring the schema up to the last of ``migrations`` (default: :data:`LATEST`) on ``conn``, an asyncpg
    connection; returns the versions applied."""
    applied: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS switchboard_schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {
            row["version"] for row in await conn.fetch("SELECT version FROM switchboard_schema_migrations")
        }
        for migration in migrations:
            if migration.version in done:
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO switchboard_schema_migrations (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
            applied.append(migration.version)
    return applied
