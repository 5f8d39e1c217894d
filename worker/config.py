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

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.quiet_hours import SendingWindow, WindowError
from worker.registry import Registry

ENV_PREFIX = "SWITCHBOARD_"
RUNTIME_ACCOUNT_FIELDS = ("rate_limit_per_second", "sending_window", "timezone")
"""Account fields the runtime reads itself; the rest belong to the vendor's model."""


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
    rate_limit_per_second: float = Field(
        0.0, ge=0, description="Default per-account vendor request limit; 0 = none."
    )

    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: str = "INFO"

    webhooks: bool = Field(False, description="Serve inbound vendor webhooks on the metrics port.")

    def shared_redis_url(self) -> str | None:
        if self.redis_url is not None:
            return self.redis_url.get_secret_value()
        store = self.store_url.get_secret_value()
        return store if store.startswith(("redis://", "rediss://")) else None

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
    return Account(
        vendor=vendor, alias=alias, settings=model, rate_limit_per_second=limit, sending_window=window
    )


def redacted(settings: Settings) -> dict[str, Any]:
    """The effective settings with secrets hidden (``switchboard config show``)."""
    shown: dict[str, Any] = {}
    for name, value in settings.model_dump().items():
        if isinstance(value, SecretStr):
            shown[name] = _redact_url(value.get_secret_value()) if name.endswith("_url") else "**********"
        elif isinstance(value, Path):
            shown[name] = str(value)
        else:
            shown[name] = value
    return shown


def _redact_url(url: str) -> str:
    """Hide the password of ``scheme://user:password@host``."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:****@{host}"
