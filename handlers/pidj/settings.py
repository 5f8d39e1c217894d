"""One Pidj account's settings.

The default account comes from ``SWITCHBOARD_PIDJ_<FIELD>`` (``..._ACCOUNT_KEY``,
``..._TOKEN``, ``..._WEBHOOK_SECRET``, ``..._BASE_URL``), others from the
accounts TOML file (``[pidj.<alias>]``).
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

DEFAULT_BASE_URL = "https://gopidj.com/api/2020"
DEFAULT_CHECK_CONSENT_PATH = "/contact/{contact_id}/{group_id}/check-consent"
"""The document's garbled ``GET /contact_id}/{group_id}/check-consent``, as we read it."""
_URL_SAFE = re.compile(r"[A-Za-z0-9._~-]{16,256}")


class PidjAccount(BaseModel):
    """Credentials and endpoints of one Pidj account (API version 2020)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str = Field(DEFAULT_BASE_URL, description="API root, version included.")
    account_key: SecretStr = Field(description="HTTP Basic user name (Pidj 'Account Key').")
    token: SecretStr = Field(description="HTTP Basic password (Pidj 'Token').")
    webhook_secret: SecretStr | None = Field(
        None,
        description="Shared secret that inbound webhooks must carry (URL path or X-Switchboard-Secret); "
        "without it this account's webhooks are refused.",
    )

    check_consent_path: str = Field(
        DEFAULT_CHECK_CONSENT_PATH,
        description="Path of check-consent under base_url, with {contact_id} and {group_id} "
        "(the document's path is garbled; see docs/vendor-assumptions.md).",
    )
    webhook_number_fields: str = Field(
        "",
        description="Comma-separated dotted fields (e.g. subscriber.msisdn) read first for the person's "
        "number in opt-out/opt-in webhooks, should Pidj's bodies differ from our assumption.",
    )

    @field_validator("check_consent_path")
    @classmethod
    def _both_ids(cls, value: str) -> str:
        if not value.startswith("/") or "{contact_id}" not in value or "{group_id}" not in value:
            raise ValueError("must start with / and contain {contact_id} and {group_id}")
        return value

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("must start with https:// (or http:// for a local simulator)")
        return value.rstrip("/")

    @field_validator("account_key")
    @classmethod
    def _no_colon(cls, value: SecretStr) -> SecretStr:
        # HTTP Basic cannot carry a user name with a colon; say so at start-up, not on the first call.
        secret = value.get_secret_value()
        if not secret or ":" in secret:
            raise ValueError("must be non-empty and contain no ':'")
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        # It travels in a URL path (Pidj's webhook settings take only a URL): keep it URL-safe.
        if value is not None and not _URL_SAFE.fullmatch(value.get_secret_value()):
            raise ValueError("must be 16-256 characters of A-Z a-z 0-9 - _ . ~")
        return value
