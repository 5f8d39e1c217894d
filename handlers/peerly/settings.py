"""One Peerly account's settings (``SWITCHBOARD_PEERLY_<FIELD>`` for the default account)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

PEERLY_BASE_URL = "https://app.peerly.com/api"


class PeerlyAccount(BaseModel):
    """Credentials and the knobs of one Peerly login."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str = Field(PEERLY_BASE_URL, description="Peerly API root, ending in /api.")
    email: SecretStr = Field(description="Login e-mail; sent only as md5(lower-cased e-mail).")
    password: SecretStr = Field(description="Login password; sent only as md5(password).")
    account_id: str | None = Field(
        None, pattern=r"^[0-9]{1,20}$", description="Peerly account id used when a payload has no account_id."
    )
    upload_dir: Path | None = Field(
        None, description="Directory whose files upload_list/create_media may read (file.path)."
    )
    upload_url_allowlist: list[str] = Field(
        default_factory=list,
        description="https URL prefixes or host names that file.url may point at; empty = no URLs.",
    )
    token_max_age_seconds: float = Field(
        1800.0,
        gt=0,
        description="Log in again once the JWT is this old (Peerly documents no lifetime); also on a 401.",
    )
    upload_min_bytes_per_second: float = Field(
        262_144.0,
        gt=0,
        description="Slowest upload rate we wait for: an upload may take vendor_timeout + size / this.",
    )
    list_poll_seconds: float = Field(30.0, gt=0, description="Wait between two list status checks.")
    list_deadline_seconds: float = Field(
        6 * 3600.0,
        gt=0,
        description="upload_list fails when the list is not ACTIVE this long after the upload.",
    )

    @field_validator("upload_url_allowlist", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        # The environment gives one string; the TOML file gives a list.
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("upload_url_allowlist")
    @classmethod
    def _https_only(cls, value: list[str]) -> list[str]:
        for entry in value:
            if "://" in entry and not entry.lower().startswith("https://"):
                raise ValueError(f"{entry!r}: only https URLs may be allowed")
        return value
