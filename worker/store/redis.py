"""Redis backend: shared by workers on many hosts.

Each decision is one Lua script, so it is atomic on the server. A record is a
hash ``sb:cmd:<account>:<id>`` that expires after the retention period.
Redis as most teams run it keeps nothing on disk: a restart forgets records
and opt-outs (the PostgreSQL backend is for fleets that need both to survive).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from worker.logging import get_logger
from worker.store.base import BreakerRecord, Claim, ClaimStatus, Lease

log = get_logger("switchboard.store.redis")

_CLAIM = """
local r = redis.call('HMGET', KEYS[1], 'fp', 'status', 'attempts', 'first', 'started', 'lease', 'state', 'event')
local now = tonumber(ARGV[2])
local lease = ARGV[3]
if not r[1] then
  redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'status', 'running', 'attempts', 1, 'first', ARGV[2],
             'started', ARGV[2], 'lease', lease)
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return {'acquired', 1, ARGV[2], ARGV[2], lease, false, false}
end
if r[1] ~= ARGV[1] then return {'conflict', r[3], r[4], r[5], r[6] or false, false, false} end
if r[2] == 'done' then return {'done', r[3], r[4], r[5], r[6] or false, false, r[8]} end
if r[2] == 'pending' or r[2] == 'waiting' then
  local attempts = tonumber(r[3])
  if r[2] == 'pending' then attempts = attempts + 1 end
  redis.call('HSET', KEYS[1], 'status', 'running', 'attempts', attempts, 'started', ARGV[2], 'lease', lease)
  return {'acquired', attempts, r[4], ARGV[2], lease, r[7] or false, false}
end
if tonumber(r[6]) > now then return {'busy', r[3], r[4], r[5], r[6], r[7] or false, false} end
return {'expired', r[3], r[4], r[5], r[6], r[7] or false, false}
"""

_TAKE_OVER = """
local r = redis.call('HMGET', KEYS[1], 'status', 'lease', 'attempts', 'first', 'state')
if r[1] ~= 'running' or r[2] ~= ARGV[1] then return {'busy'} end
local attempts = tonumber(r[3]) + 1
redis.call('HSET', KEYS[1], 'attempts', attempts, 'started', ARGV[2], 'lease', ARGV[3])
return {'acquired', attempts, r[4], ARGV[2], ARGV[3], r[5] or false, false}
"""

_RELEASE = """
local r = redis.call('HMGET', KEYS[1], 'status', 'started')
if r[1] ~= 'running' or (ARGV[3] ~= '' and r[2] ~= ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'lease', '0')
if ARGV[2] == '' then redis.call('HDEL', KEYS[1], 'state') else redis.call('HSET', KEYS[1], 'state', ARGV[2]) end
return 1
"""

_COMPLETE = """
local r = redis.call('HMGET', KEYS[1], 'status', 'event')
if r[1] == 'done' then return r[2] end
redis.call('HSET', KEYS[1], 'status', 'done', 'event', ARGV[2], 'lease', '0')
if not redis.call('HGET', KEYS[1], 'fp') then
  redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'attempts', 0, 'first', ARGV[3])
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return ARGV[2]
"""

_RENEW = """
local r = redis.call('HMGET', KEYS[1], 'status', 'started')
if r[1] ~= 'running' or r[2] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'lease', ARGV[2])
return 1
"""

_TAKE_PROBE = """
local r = redis.call('HMGET', KEYS[1], 'open', 'probe')
if not r[1] then return {0, false, false} end
local now = tonumber(ARGV[1])
if tonumber(r[1]) <= now and tonumber(r[2]) <= now then
  redis.call('HSET', KEYS[1], 'probe', ARGV[2])
  return {1, r[1], ARGV[2]}
end
return {0, r[1], r[2]}
"""

_SUPPRESS = """
local created = tonumber(ARGV[4])
local existing = redis.call('HGET', KEYS[1], ARGV[1])
if existing and ARGV[5] == '1' then return 0 end
if existing then created = cjson.decode(existing)['created_at'] end
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode({reason = ARGV[2], source = ARGV[3], created_at = created}))
return 1
"""

_UNSUPPRESS_FROM = """
local existing = redis.call('HGET', KEYS[1], ARGV[1])
if not existing or cjson.decode(existing)['source'] ~= ARGV[2] then return 0 end
return redis.call('HDEL', KEYS[1], ARGV[1])
"""

_STATUS = {
    b"acquired": ClaimStatus.ACQUIRED,
    b"done": ClaimStatus.DONE,
    b"busy": ClaimStatus.BUSY,
    b"expired": ClaimStatus.EXPIRED,
    b"conflict": ClaimStatus.CONFLICT,
}


def _float(value: Any) -> float | None:
    return None if value in (None, b"") else float(value)


def _to_claim(reply: list[Any]) -> Claim:
    status = _STATUS[reply[0]]
    if len(reply) == 1:
        return Claim(status)
    return Claim(
        status,
        attempts=int(reply[1] or 0),
        first_attempt_at=_float(reply[2]),
        attempt_started_at=_float(reply[3]),
        lease_until=_float(reply[4]),
        state=orjson.loads(reply[5]) if reply[5] else None,
        event=reply[6] or None,
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _key(account: str, command_id: str) -> str:
    return f"sb:cmd:{account}:{command_id}"


class Pipeliner:
    """Scripts and commands issued in one event-loop turn go to Redis in one
    pipeline: one round trip for dozens of commands in flight, where each
    used to pay its own (and borrow a pooled connection for it).

    Not a transaction: each script is atomic by itself, which is all the
    store needs. A script Redis has forgotten (a restart flushes them) is
    sent again with EVAL by redis-py's own ``Script`` object.
    """

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self._pending: list[tuple[Any, tuple[Any, ...], asyncio.Future[Any]]] = []
        self._sending: set[asyncio.Task[None]] = set()

    def script(self, script: Any, keys: list[str], args: list[Any]) -> asyncio.Future[Any]:
        return self._submit(script, (keys, args))

    def command(self, name: str, *args: Any) -> asyncio.Future[Any]:
        return self._submit(name, args)

    def _submit(self, what: Any, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((what, args, future))
        return future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[tuple[Any, tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for what, args, _ in batch:
                    if isinstance(what, str):
                        pipe.execute_command(what, *args)
                    else:
                        keys, script_args = args
                        pipe.evalsha(what.sha, len(keys), *keys, *script_args)
                replies = await pipe.execute(raise_on_error=False)
        except Exception as exc:
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (what, args, future), reply in zip(batch, replies, strict=True):
            if isinstance(reply, NoScriptError):
                keys, script_args = args
                try:
                    reply = await what(keys=keys, args=script_args)
                except Exception as exc:
                    reply = exc
            if future.done():
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)


class RedisIdempotencyStore:
    def __init__(
        self, client: aioredis.Redis, retention_seconds: float, pipeliner: Pipeliner | None = None
    ) -> None:
        self.client = client
        self.retention_ms = int(retention_seconds * 1000)
        self.pipeliner = pipeliner or Pipeliner(client)
        self._claim = client.register_script(_CLAIM)
        self._take_over = client.register_script(_TAKE_OVER)
        self._release = client.register_script(_RELEASE)
        self._complete = client.register_script(_COMPLETE)
        self._renew = client.register_script(_RENEW)

    async def claim(
        self, account: str, command_id: str, fingerprint: str, now: float, lease_seconds: float
    ) -> Claim:
        reply = await self.pipeliner.script(
            self._claim,
            [_key(account, command_id)],
            [fingerprint, repr(now), repr(now + lease_seconds), self.retention_ms],
        )
        return _to_claim(reply)

    async def take_over(
        self, account: str, command_id: str, expected_lease_until: float, now: float, lease_seconds: float
    ) -> Claim:
        reply = await self.pipeliner.script(
            self._take_over,
            [_key(account, command_id)],
            [repr(expected_lease_until), repr(now), repr(now + lease_seconds)],
        )
        return _to_claim(reply)

    async def release(
        self,
        account: str,
        command_id: str,
        state: dict[str, Any] | None = None,
        *,
        waiting: bool = False,
        started: float | None = None,
    ) -> None:
        await self.pipeliner.script(
            self._release,
            [_key(account, command_id)],
            [
                "waiting" if waiting else "pending",
                b"" if state is None else orjson.dumps(state),
                "" if started is None else repr(started),
            ],
        )

    async def complete(
        self, account: str, command_id: str, fingerprint: str, event: bytes, now: float
    ) -> bytes:
        stored: bytes = await self.pipeliner.script(
            self._complete,
            [_key(account, command_id)],
            [fingerprint, event, repr(now), self.retention_ms],
        )
        return stored

    async def forget(self, account: str, command_id: str) -> bool:
        return bool(await self.client.delete(_key(account, command_id)))

    async def renew(self, leases: list[Lease], now: float, lease_seconds: float) -> list[bool]:
        until = repr(now + lease_seconds)
        # One script per lease, all in one pipeline (one round trip for the whole batch).
        replies = await asyncio.gather(
            *(
                self.pipeliner.script(
                    self._renew,
                    [_key(lease.account, lease.command_id)],
                    [repr(lease.attempt_started_at), until],
                )
                for lease in leases
            )
        )
        return [reply == 1 for reply in replies]

    async def prune(self, now: float) -> int:
        return 0  # keys expire by themselves

    async def close(self) -> None:
        await self.client.aclose()


class RedisSuppressionList:
    def __init__(self, client: aioredis.Redis, pipeliner: Pipeliner | None = None) -> None:
        self.client = client
        self.pipeliner = pipeliner or Pipeliner(client)
        self._add = client.register_script(_SUPPRESS)
        self._remove_from = client.register_script(_UNSUPPRESS_FROM)

    @staticmethod
    def _key(account: str) -> str:
        return f"sb:suppressed:{account}"

    async def add(
        self, account: str, number: str, *, reason: str, source: str, now: float, keep_existing: bool = False
    ) -> None:
        # Like the SQL stores: a number added again keeps its first opt-out time.
        keep = "1" if keep_existing else "0"
        await self._add(keys=[self._key(account)], args=[number, reason, source, repr(now), keep])

    async def remove(self, account: str, number: str, *, source: str | None = None) -> bool:
        if source is not None:
            return bool(await self._remove_from(keys=[self._key(account)], args=[number, source]))
        return bool(await self.client.hdel(self._key(account), number))

    async def contains(self, account: str, number: str) -> bool:
        return bool(await self.pipeliner.command("HEXISTS", self._key(account), number))

    def contains_soon(self, account: str, number: str) -> asyncio.Future[Any]:
        return self.pipeliner.command("HEXISTS", self._key(account), number)

    async def list(self, account: str | None = None) -> list[dict[str, Any]]:
        if account is not None:
            keys = [self._key(account).encode()]
        else:
            keys = sorted([key async for key in self.client.scan_iter(match="sb:suppressed:*")])
        rows: list[dict[str, Any]] = []
        for key in keys:
            owner = _text(key).removeprefix("sb:suppressed:")
            entries = await self.client.hgetall(key)
            for number, value in sorted(entries.items()):
                rows.append({"account": owner, "number": _text(number), **orjson.loads(value)})
        return rows


class RedisDeduper:
    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client

    async def first_time(self, key: str, now: float, ttl_seconds: float) -> bool:
        return bool(await self.client.set(f"sb:seen:{key}", b"1", nx=True, px=int(ttl_seconds * 1000)))

    async def forget(self, key: str) -> None:
        await self.client.delete(f"sb:seen:{key}")


class RedisControlStore:
    KEY = "sb:controls"

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client

    async def put_control(self, key: str, value: dict[str, Any], expires_at: float) -> None:
        await self.client.hset(self.KEY, key, orjson.dumps({"value": value, "expires_at": expires_at}))

    async def remove_control(self, key: str) -> bool:
        return bool(await self.client.hdel(self.KEY, key))

    async def controls(self, now: float) -> dict[str, dict[str, Any]]:
        live: dict[str, dict[str, Any]] = {}
        expired = []
        for key, raw in (await self.client.hgetall(self.KEY)).items():
            entry = orjson.loads(raw)
            if entry["expires_at"] > now:
                live[_text(key)] = entry["value"]
            else:
                expired.append(key)
        if expired:
            # Entries of workers that died without leaving would otherwise stay in the hash forever.
            await self.client.hdel(self.KEY, *expired)
        return live

    async def peek(self, account: str, command_id: str) -> dict[str, Any] | None:
        fields = await self.client.hgetall(_key(account, command_id))
        if not fields:
            return None
        record = {_text(k): v for k, v in fields.items()}
        return {
            "status": _text(record.get("status", b"")),
            "attempts": int(record.get("attempts", 0)),
            "first_attempt_at": _float(record.get("first")),
            "attempt_started_at": _float(record.get("started")),
            "event": orjson.loads(record["event"]) if record.get("event") else None,
        }


async def keeps_nothing_on_disk(client: aioredis.Redis) -> bool | None:
    """True when neither RDB snapshots (``save``) nor the AOF (``appendonly``) are on; None if unknown.

    Managed Redis often disables or renames ``CONFIG``: that is no error, only unknown.
    """
    try:
        save = await client.config_get("save")
        appendonly = await client.config_get("appendonly")
    except RedisError:
        return None
    if "save" not in save or "appendonly" not in appendonly:
        return None
    return not str(save["save"]).strip() and str(appendonly["appendonly"]).lower() != "yes"


async def warn_if_keeps_nothing(client: aioredis.Redis) -> None:
    """Warn at start when this Redis loses everything on a restart (opt-outs included)."""
    volatile = await keeps_nothing_on_disk(client)
    if volatile:
        log.warning(
            "the Redis store keeps nothing on disk (save is empty, appendonly is no): a Redis restart"
            " forgets idempotency records and opt-outs; turn on appendonly or use a PostgreSQL store",
        )
    elif volatile is None:
        log.info("could not read the Redis persistence settings (CONFIG unavailable); not checked")


class RedisBreakerStore:
    """A hash ``sb:breaker:<vendor>`` (fields ``open``, ``probe``) per open breaker."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self._take_probe = client.register_script(_TAKE_PROBE)

    @staticmethod
    def _key(key: str) -> str:
        return f"sb:breaker:{key}"

    async def breaker(self, key: str) -> BreakerRecord | None:
        opened, probe = await self.client.hmget(self._key(key), ["open", "probe"])
        return None if opened is None else BreakerRecord(float(opened), float(probe or 0))

    async def trip(self, key: str, open_until: float) -> None:
        await self.client.hset(self._key(key), mapping={"open": repr(open_until), "probe": "0"})

    async def take_probe(self, key: str, now: float, probe_until: float) -> tuple[bool, BreakerRecord | None]:
        granted, opened, probe = await self._take_probe(
            keys=[self._key(key)], args=[repr(now), repr(probe_until)]
        )
        record = None if opened is None else BreakerRecord(float(opened), float(probe or 0))
        return granted == 1, record

    async def reset(self, key: str) -> None:
        await self.client.delete(self._key(key))
