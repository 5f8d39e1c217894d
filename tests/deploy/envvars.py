"""The SWITCHBOARD_* environment variables the worker reads (worker/config.py and the vendors' account models)."""

from __future__ import annotations

from collections.abc import Iterable

from handlers import build_registry
from worker.config import ENV_PREFIX, Settings

registry = build_registry()


def known_env_vars() -> set[str]:
    names = {ENV_PREFIX + field.upper() for field in Settings.model_fields}
    for vendor, spec in registry.vendors.items():
        for field in (*spec.account_model.model_fields, "rate_limit_per_second"):
            names.add(f"{ENV_PREFIX}{vendor.upper()}_{field.upper()}")
    return names


def unknown(names: Iterable[str]) -> list[str]:
    """The SWITCHBOARD_* names among ``names`` that no setting reads (a typo would be silently ignored)."""
    known = known_env_vars()
    return sorted(name for name in names if name.startswith(ENV_PREFIX) and name not in known)
