"""Vendor accounts at start-up: validate them, start sandboxes, build clients.

A vendor with no account configured is not consumed (its commands wait in
its queue for a worker that has one), unless ``SWITCHBOARD_SANDBOX`` is on:
then the vendor's built-in simulator is started and used. Sandboxes never
start on their own, so a production worker with a missing secret fails
loudly instead of texting into a simulator.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from pydantic import BaseModel

from worker.config import Account, ConfigError, Settings, build_account, raw_accounts
from worker.keepalive import KeepAlivePool
from worker.logging import get_logger
from worker.ratelimit import RedisRateLimiter, TokenBucket
from worker.registry import Registry, VendorClient
from worker.vendor_http import Limiter, VendorHTTP

log = get_logger("switchboard.accounts")


@dataclass
class Accounts:
    """Accounts by (vendor, alias), and the vendors to consume."""

    accounts: dict[tuple[str, str], Account]
    vendors: list[str]
    sandboxes: dict[str, str] = field(default_factory=dict)
    """vendor -> base URL of a running sandbox"""

    def settings_of(self, vendor: str) -> dict[str, BaseModel]:
        return {alias: account.settings for (v, alias), account in self.accounts.items() if v == vendor}


async def resolve(settings: Settings, registry: Registry, stack: AsyncExitStack) -> Accounts:
    """Read every account; start sandboxes where asked and needed, each stopped by ``stack``."""
    raw = raw_accounts(settings, registry)
    wanted = settings.vendor_names()
    unknown = (wanted or set()) - set(registry.vendors)
    if unknown:
        raise ConfigError([f"SWITCHBOARD_VENDORS: unknown vendor(s) {', '.join(sorted(unknown))}"])
    result = Accounts({}, [])
    for vendor, spec in sorted(registry.vendors.items()):
        if wanted is not None and vendor not in wanted:
            continue
        by_alias = raw[vendor]
        default = by_alias.get("default", {})
        if (
            settings.sandbox
            and spec.start_sandbox is not None
            and not _complete(vendor, default, registry, settings)
        ):
            sandbox = await spec.start_sandbox()
            stack.push_async_callback(sandbox.stop)
            by_alias["default"] = {
                **sandbox.account,
                **{k: v for k, v in default.items() if v not in ("", None)},
            }
            result.sandboxes[vendor] = str(sandbox.account.get("base_url", ""))
            log.warning(
                "vendor sandbox started: commands go to a simulator, not the vendor",
                vendor=vendor,
                url=result.sandboxes[vendor],
            )
        if not by_alias:
            if wanted is not None:
                raise ConfigError(
                    [f"SWITCHBOARD_VENDORS names {vendor}, but no {vendor} account is configured"]
                )
            log.warning("no account configured; not consuming this vendor's queue", vendor=vendor)
            continue
        for alias, values in sorted(by_alias.items()):
            result.accounts[(vendor, alias)] = build_account(vendor, alias, values, registry, settings)
        result.vendors.append(vendor)
    return result


def _complete(vendor: str, values: dict[str, Any], registry: Registry, settings: Settings) -> bool:
    if not values:
        return False
    try:
        build_account(vendor, "default", values, registry, settings)
    except ConfigError:
        return False
    return True


def build_clients(
    accounts: Accounts,
    registry: Registry,
    session: aiohttp.ClientSession,
    settings: Settings,
    redis_client: aioredis.Redis | None,
    stack: AsyncExitStack,
) -> dict[tuple[str, str], VendorClient]:
    """One client per account, each with its own limiter and keep-alive connections (on the shared
    aiohttp session for what those do not carry), closed by ``stack``."""
    clients: dict[tuple[str, str], VendorClient] = {}
    for (vendor, alias), account in accounts.accounts.items():
        limiter: Limiter | None = None
        if account.rate_limit_per_second > 0:
            limiter = (
                RedisRateLimiter(redis_client, f"{vendor}:{alias}", account.rate_limit_per_second)
                if redis_client is not None
                else TokenBucket(account.rate_limit_per_second)
            )
        base_url = str(account.settings.model_dump()["base_url"])
        pool = None
        if settings.vendor_http_client == "keepalive" and base_url.startswith(("http://", "https://")):
            pool = KeepAlivePool(
                base_url,
                timeout=settings.vendor_timeout_seconds,
                limit=max(100, settings.max_in_flight * 2),  # as the aiohttp connector's
            )
            stack.push_async_callback(pool.close)
        http = VendorHTTP(
            vendor, session, base_url, timeout=settings.vendor_timeout_seconds, limiter=limiter, pool=pool
        )
        client = registry.vendors[vendor].make_client(account.settings, http)
        stack.push_async_callback(client.close)
        clients[(vendor, alias)] = client
    return clients
