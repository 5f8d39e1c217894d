"""Settings: 12-factor environment variables, plus a TOML file for accounts.

Every runtime setting is ``SWITCHBOARD_<NAME>``. Vendor accounts come from

- ``SWITCHBOARD_<VENDOR>_<FIELD>``: the vendor's ``default`` account
  (``SWITCHBOARD_PIDJ_ACCOUNT_KEY``, ``SWITCHBOARD_PEERLY_EMAIL``, ...);
- the TOML file named by ``SWITCHBOARD_ACCOUNTS_FILE``, one table per account::

      [pidj.default]
      account_key = "..."
      token = "..."
      sending_window = "08:00-21:00"   # quiet hours: send only then, recipient's local time
      timezone = "America/Chicago"     # the account's own zone (ambiguous numbers, default UTC)

      [peerly.east]
      email = "..."
      password = "..."
      rate_limit_per_second = 20

Each vendor's account model validates its own fields; the runtime reads
``rate_limit_per_second``, ``sending_window`` and ``timezone`` itself. Credentials live only here, never in messages, and
are ``SecretStr`` so they never print.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.brokers import BrokerURLError, broker_urls
from worker.quiet_hours import SendingWindow, WindowError
from worker.registry import Registry

ENV_PREFIX = "SWITCHBOARD_"
PLACEHOLDER_MARK = "CHANGE-ME"
"""The placeholder of deploy/k8s/overlays/example: a secret holding it was never set for real."""
STORE_SCHEMES = frozenset({"sqlite", "redis", "rediss", "unix", "postgresql", "postgres"})
"""What ``SWITCHBOARD_STORE_URL`` may start with (worker/store/__init__.py opens each)."""
RUNTIME_ACCOUNT_FIELDS = ("rate_limit_per_second", "sending_window", "timezone")
"""Account fields the runtime reads itself; the rest belong to the vendor's model."""
TOOLING_PREFIXES = ("SWITCHBOARD_TEST_", "SWITCHBOARD_BENCH_", "SWITCHBOARD_DRILL_")
"""``SWITCHBOARD_*`` names read by the tests, the bench and the drills, never by the worker."""


class ConfigError(Exception):
    """Bad settings; ``lines`` has one readable line per problem."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


class Settings(BaseSettings):
    """Runtime settings; each field is the env var ``SWITCHBOARD_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    amqp_url: SecretStr = SecretStr("amqp://guest:guest@127.0.0.1:5672/%2F")
    metrics_host: str = "0.0.0.0"
    metrics_port: int = Field(9180, ge=0, le=65535)
    store_url: SecretStr = Field(
        SecretStr("sqlite:///var/switchboard.sqlite3"),
        description="Idempotency records, opt-outs, controls: sqlite:///path, redis://host:port/db or postgresql://user@host/db.",
    )
    redis_url: SecretStr | None = Field(
        None,
        description="Redis for state shared by workers (rate limits); defaults to STORE_URL when that is Redis.",
    )
    accounts_file: Path | None = None
    vendors: str = Field(
        "", description="Comma-separated vendors to consume; empty = every configured vendor."
    )
    sandbox: bool = Field(False, description="Start the built-in simulators for vendors with no credentials.")

    max_in_flight: int = Field(256, ge=1, le=65535, description="Unacked commands per vendor queue.")
    max_message_bytes: int = Field(1024 * 1024, ge=1024)
    gc_young_threshold: int = Field(
        50_000,
        ge=0,
        description="Net new objects between the garbage collector's young collections (worker.collector);"
        " 0 = Python's default (700) and no freeze.",
    )
    handler_timeout_seconds: float = Field(60.0, gt=0)
    lease_seconds: float = Field(120.0, gt=0)
    live_lease_seconds: float = Field(
        10.0,
        ge=0,
        description="Lease on a command being run, renewed every third of it while the worker lives:"
        " a killed worker's commands are free this long after it died. 0 = the fixed LEASE_SECONDS.",
    )
    shutdown_grace_seconds: float = Field(30.0, ge=0)
    retention_days: float = Field(7.0, gt=0)

    max_attempts: int = Field(8, ge=1)
    max_age_seconds: float = Field(24 * 3600.0, gt=0)
    retry_base_seconds: float = Field(1.0, gt=0)
    retry_max_seconds: float = Field(600.0, gt=0)
    defer_seconds: float = Field(
        5.0, gt=0, description="Wait before re-checking a command another worker holds."
    )
    delivery_limit: int = Field(
        20, ge=2, description="Quorum-queue redeliveries before the broker dead-letters a message."
    )

    breaker_failures: int = Field(
        20, ge=1, description="Consecutive transient vendor failures that open the breaker."
    )
    breaker_cooldown_seconds: float = Field(30.0, gt=0)
    breaker_sync_seconds: float = Field(
        1.0, gt=0, description="How often a worker reads the fleet's breakers from the store."
    )
    prefetch_start: int = Field(
        8,
        ge=1,
        description="Prefetch a worker starts with per vendor queue; doubles per successful batch up to MAX_IN_FLIGHT.",
    )

    vendor_timeout_seconds: float = Field(15.0, gt=0)
    vendor_http_client: Literal["keepalive", "aiohttp"] = Field(
        "keepalive",
        description="Vendor calls with a plain body on worker.keepalive (httptools), or every call on aiohttp.",
    )
    file_memory_budget_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024 * 1024,
        description="File bytes all commands may hold in memory at once (uploads stream); over it, commands wait.",
    )
    rate_limit_per_second: float = Field(
        0.0, ge=0, description="Default per-account vendor request limit; 0 = none."
    )

    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: str = "INFO"

    webhooks: bool = Field(False, description="Serve inbound vendor webhooks on the metrics port.")
    webhook_publish_timeout_seconds: float = Field(
        10.0, gt=0, description="How long a webhook waits for the broker's confirm before answering 503."
    )
    max_result_bytes: int = Field(
        256 * 1024,
        ge=4096,
        description="Largest encoded result event; past it, lists in the result are truncated (flagged).",
    )

    postgres_pool_size: int = Field(
        20, ge=1, description="PostgreSQL connections per process at most (pods x this <= max_connections)."
    )
    postgres_statement_cache_size: int = Field(
        100, ge=0, description="asyncpg prepared-statement cache; 0 behind PgBouncer in transaction mode."
    )
    allow_unshared_store: bool = Field(
        False,
        description="Start on a SQLite store even when a vendor queue has consumers this store does not know.",
    )
    pause_max_defer_seconds: float = Field(
        60.0,
        gt=0,
        description="Longest wait of a paused command between two looks (grows from DEFER_SECONDS).",
    )
    webhook_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Port of a listener of its own for webhooks (on METRICS_HOST), so a flood of webhook "
        "clients cannot starve /healthz, /readyz and /metrics; unset = webhooks share the metrics port.",
    )
    http_header_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="A request's line and headers must arrive within this, or the connection closes.",
    )
    http_read_timeout_seconds: float = Field(
        15.0, gt=0, description="A request body must arrive within this, or the request is answered 408."
    )
    http_idle_timeout_seconds: float = Field(
        30.0, gt=0, description="A keep-alive connection with no request for this long is closed."
    )
    http_max_connections: int = Field(
        256, ge=1, description="Open connections per HTTP listener; more are closed at once."
    )
    reply_to_allow: str = Field(
        "",
        description="Comma-separated queue names accepted as reply_to besides amq.gen-* and amq.rabbitmq.reply-to.",
    )

    @field_validator("amqp_url")
    @classmethod
    def _broker_addresses(cls, value: SecretStr) -> SecretStr:
        """One URL or a cluster's comma-separated nodes (worker/brokers.py); checked at start."""
        try:
            broker_urls(value.get_secret_value())
        except BrokerURLError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("store_url")
    @classmethod
    def _store_kind(cls, value: SecretStr) -> SecretStr:
        """A store the worker can open, never a silent stand-in (checked at start, the URL never echoed)."""
        url = value.get_secret_value()
        scheme = url.partition("://")[0].lower() if "://" in url else ""
        if scheme not in STORE_SCHEMES:
            raise ValueError(
                f"unsupported store {scheme + '://' if scheme else '(no scheme://)'}"
                " (use sqlite:///path, redis://host:port/db or postgresql://user@host/db)"
            )
        if scheme == "sqlite" and not url[len("sqlite://") :].lstrip("/"):
            # An empty path would be an in-memory store: records gone at every restart.
            raise ValueError("sqlite:// needs a file path (sqlite:///relative/x.db or sqlite:////abs/x.db)")
        return value

    def shared_redis_url(self) -> str | None:
        if self.redis_url is not None:
            return self.redis_url.get_secret_value()
        store = self.store_url.get_secret_value()
        return store if store.startswith(("redis://", "rediss://")) else None

    def reply_to_names(self) -> frozenset[str]:
        return frozenset(name.strip() for name in self.reply_to_allow.split(",") if name.strip())

    def vendor_names(self) -> set[str] | None:
        names = {name.strip() for name in self.vendors.split(",") if name.strip()}
        return names or None


@dataclass(frozen=True)
class Account:
    """One configured vendor account."""

    vendor: str
    alias: str
    settings: BaseModel
    rate_limit_per_second: float
    sending_window: SendingWindow | None = None


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read ``Settings`` from the environment; ConfigError with one line per bad setting."""
    env = dict(os.environ if environ is None else environ)
    try:
        return Settings(**_settings_kwargs(env))
    except ValidationError as exc:
        raise ConfigError(_lines(exc, prefix=ENV_PREFIX)) from None


def _settings_kwargs(env: Mapping[str, str]) -> dict[str, Any]:
    fields = Settings.model_fields
    kwargs: dict[str, Any] = {}
    for key, value in env.items():
        if key.startswith(ENV_PREFIX):
            name = key[len(ENV_PREFIX) :].lower()
            if name in fields:
                kwargs[name] = value
    return kwargs


def valid_names(registry: Registry) -> set[str]:
    """Every ``SWITCHBOARD_*`` variable the worker reads, derived from the settings models."""
    names = {ENV_PREFIX + field.upper() for field in Settings.model_fields}
    for vendor, spec in registry.vendors.items():
        for field in (*spec.account_model.model_fields, *RUNTIME_ACCOUNT_FIELDS):
            names.add(f"{ENV_PREFIX}{vendor.upper()}_{field.upper()}")
    return names


def check_environment(registry: Registry, environ: Mapping[str, str] | None = None) -> None:
    """ConfigError for every ``SWITCHBOARD_*`` variable that is no setting: a typo must not pass silently."""
    env = os.environ if environ is None else environ
    valid = valid_names(registry)
    lines = []
    for key in sorted(env):
        if not key.startswith(ENV_PREFIX) or key in valid or key.startswith(TOOLING_PREFIXES):
            continue
        nearest = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
        hint = f"did you mean {nearest[0]}?" if nearest else "see the configuration table in the README"
        lines.append(f"{key} is not a Switchboard setting; {hint}")
    if lines:
        raise ConfigError(lines)


def _lines(exc: ValidationError, prefix: str) -> list[str]:
    lines = []
    for error in exc.errors():
        where = prefix + "_".join(str(part) for part in error["loc"]).upper()
        lines.append(f"{where}: {error['msg']}")
    return lines


def raw_accounts(
    settings: Settings, registry: Registry, environ: Mapping[str, str] | None = None
) -> dict[str, dict[str, dict[str, Any]]]:
    """vendor -> alias -> raw settings, from the TOML file and the environment."""
    env = os.environ if environ is None else environ
    accounts: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in registry.vendors}
    if settings.accounts_file is not None:
        try:
            document = tomllib.loads(settings.accounts_file.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(
                [f"{ENV_PREFIX}ACCOUNTS_FILE: cannot read {settings.accounts_file}: {exc}"]
            ) from None
        for vendor, tables in document.items():
            if vendor not in accounts:
                raise ConfigError([f"{settings.accounts_file}: unknown vendor [{vendor}]"])
            for alias, table in tables.items():
                accounts[vendor][alias] = dict(table)
    for vendor, spec in registry.vendors.items():
        prefix = f"{ENV_PREFIX}{vendor.upper()}_"
        from_env = {
            field: env[prefix + field.upper()]
            for field in (*spec.account_model.model_fields, *RUNTIME_ACCOUNT_FIELDS)
            if prefix + field.upper() in env
        }
        if from_env:
            accounts[vendor].setdefault("default", {}).update(from_env)
    return accounts


def build_account(
    vendor: str, alias: str, raw: Mapping[str, Any], registry: Registry, settings: Settings
) -> Account:
    """Validate one account with its vendor's model."""
    spec = registry.vendors[vendor]
    values = dict(raw)
    limit = float(values.pop("rate_limit_per_second", settings.rate_limit_per_second))
    window_text = values.pop("sending_window", None)
    account_timezone = str(values.pop("timezone", "UTC"))
    window = None
    if window_text:
        try:
            window = SendingWindow.parse(str(window_text), account_timezone)
        except WindowError as exc:
            raise ConfigError([f"{vendor} account {alias!r}: {exc}"]) from None
    try:
        model = spec.account_model.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(_lines(exc, prefix=f"{vendor} account {alias!r}: ")) from None
    placeholders = [
        f"{vendor} account {alias!r}: {name} is the example overlay's placeholder ({PLACEHOLDER_MARK}...); "
        "set the real secret"
        for name, value in model
        if isinstance(value, SecretStr) and PLACEHOLDER_MARK in value.get_secret_value()
    ]
    if placeholders:
        # A copied overlay would otherwise run with a webhook secret anyone can read in this repository.
        raise ConfigError(placeholders)
    return Account(
        vendor=vendor, alias=alias, settings=model, rate_limit_per_second=limit, sending_window=window
    )


def redacted(settings: Settings) -> dict[str, Any]:
    """The effective settings with secrets hidden (``switchboard config show``).

    Every URL (secret or not) loses its user-info password and any secret-looking
    query parameter (``?password=``, ``sslpassword``, ``token``, ...); any other
    secret is replaced whole.
    """
    shown: dict[str, Any] = {}
    for name, value in settings.model_dump().items():
        if isinstance(value, SecretStr):
            secret = value.get_secret_value()
            if name == "amqp_url":  # a cluster's nodes, comma-separated (worker/brokers.py)
                shown[name] = ",".join(_redact_broker_entry(entry) for entry in secret.split(","))
            else:
                shown[name] = _redact_url(secret) if "://" in secret else "**********"
        elif isinstance(value, Path):
            shown[name] = str(value)
        elif isinstance(value, str) and "://" in value:
            shown[name] = _redact_url(value)
        else:
            shown[name] = value
    return shown


_MASK = "****"
_SECRET_QUERY_KEY = re.compile(r"pass|pwd|secret|token|key|auth|credential", re.IGNORECASE)


def _redact_url(url: str) -> str:
    """Hide the password of ``scheme://user:password@host`` and of ``?password=...`` parameters."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    # The query is split off first: a password may hold '/', '#' or '@', a query rarely does.
    location, question, query = rest.partition("?")
    credentials, at, host = location.rpartition("@")
    if at:
        user, colon, _ = credentials.partition(":")
        location = f"{user}:{_MASK}@{host}" if colon else f"{credentials}@{host}"
    if question:
        query = "&".join(_redact_parameter(part) for part in query.split("&"))
    return f"{scheme}://{location}{question}{query}"


def _redact_broker_entry(entry: str) -> str:
    """One node of SWITCHBOARD_AMQP_URL: a full URL, or ``host:port`` (credentials, if any, hidden)."""
    if "://" in entry:
        return _redact_url(entry)
    credentials, at, host = entry.rpartition("@")
    return f"{credentials.partition(':')[0]}:{_MASK}@{host}" if at else entry


def _redact_parameter(part: str) -> str:
    key, equals, _ = part.partition("=")
    return f"{key}={_MASK}" if equals and _SECRET_QUERY_KEY.search(unquote(key)) else part
