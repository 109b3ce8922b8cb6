"""What the billing service tells the rest of the mesh through Redis, and how they read it.

- Entitlements cached by other services (`qrmesh.billing.client`) live under
  `entitlements_key(org)` for a minute. After a subscription changes, billing
  overwrites the entry with a tombstone (readers cache only with SET NX, so a
  look-up that raced the change cannot bring the old plan back) and announces
  the organization on CHANGED_CHANNEL, where clients drop their in-process copy.
- Whether an organization's subscription lapsed is the hash LAPSES_KEY:
  `organizations/{id}` -> "{version}:{1 if lapsed else 0}", version being the
  subscription's (it grows with every change). Billing announces after each
  commit, outside its lock, so announcements can reach Redis out of order: a
  Lua compare-and-set writes an entry only when its version is newer than the
  stored one, and only then publishes "+org@version" / "-org@version" on
  SUSPENSIONS_CHANNEL. The billing job rewrites the hash from its database the
  same way (an older snapshot never undoes a newer announcement) and then
  publishes RELOAD, so a lost message or a Redis restart heals. The redirect
  keeps the lapsed organizations in memory (no round trip per scan) and also
  applies only newer versions, so it converges on the database without waiting
  for the job.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import redis.asyncio as redis

ENTITLEMENTS_TTL = 60
"""Seconds other services keep an organization's entitlements in Redis."""
TOMBSTONE = "~changed~"
CHANGED_CHANNEL = "qrmesh:billing:changed"
LAPSES_KEY = "qrmesh:billing:lapses"
SUSPENSIONS_CHANNEL = "qrmesh:billing:suspensions"
RELOAD = "*"
RECONCILE_BATCH = 500
"""Organizations written per script call while reconciling."""

# ARGV: channel ("" publishes nothing), then (organization, version, lapsed 0/1) triples. Each triple is written
# only if its version is newer than the stored one; each write is announced on the channel. Answers how many
# were written.
_COMPARE_AND_SET = """
local written = 0
for i = 2, #ARGV, 3 do
  local organization, version, lapsed = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  local stored = redis.call('HGET', KEYS[1], organization)
  local known = stored and tonumber(string.match(stored, '^(%d+):')) or -1
  if version > known then
    redis.call('HSET', KEYS[1], organization, ARGV[i + 1] .. ':' .. lapsed)
    written = written + 1
    if ARGV[1] ~= '' then
      redis.call('PUBLISH', ARGV[1], (lapsed == '1' and '+' or '-') .. organization .. '@' .. ARGV[i + 1])
    end
  end
end
return written
"""


def entitlements_key(organization: str) -> str:
    """The Redis key caching an organization's entitlements (`organizations/{id}`)."""
    return f"qrmesh:billing:entitlements:{organization}"


def parse_lapse(message: str) -> tuple[str, int, bool] | None:
    """(organization, version, lapsed) of a "+org@version" / "-org@version" announcement; None if malformed."""
    sign, rest = message[:1], message[1:]
    organization, _, version = rest.rpartition("@")
    if sign not in ("+", "-") or not organization or not version.isdigit():
        return None
    return organization, int(version), sign == "+"


def _parse_entry(raw: bytes | str) -> tuple[int, bool] | None:
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    version, _, lapsed = text.partition(":")
    if not version.isdigit() or lapsed not in ("0", "1"):
        return None
    return int(version), lapsed == "1"


async def announce_change(client: redis.Redis, organization: str, *, lapsed: bool, version: int) -> bool:
    """After a committed change of `organization`'s subscription (now at `version`): forget cached
    entitlements, tell every listener, and record whether it lapsed unless a newer version already was.
    True if this version was recorded."""
    async with client.pipeline(transaction=False) as pipe:
        pipe.set(entitlements_key(organization), TOMBSTONE, ex=ENTITLEMENTS_TTL)
        pipe.publish(CHANGED_CHANNEL, organization)
        pipe.eval(
            _COMPARE_AND_SET, 1, LAPSES_KEY, SUSPENSIONS_CHANNEL, organization, str(version), "1" if lapsed else "0"
        )
        answers = await pipe.execute()
    return bool(answers[-1])


async def reconcile_suspended(
    client: redis.Redis, load: Callable[[], Awaitable[Mapping[str, tuple[int, bool]]]]
) -> int:
    """Bring the lapses hash in line with the database: `load()` answers every organization with a
    subscription -> (version, lapsed). Entries are written only where the database is newer than Redis
    (a snapshot older than an announcement never undoes it); organizations the database does not know
    are left alone. Readers are asked to reload when anything was written. The number written."""
    found = await load()
    written = 0
    items = sorted(found.items())
    for start in range(0, len(items), RECONCILE_BATCH):
        arguments: list[str] = [""]
        for organization, (version, lapsed) in items[start : start + RECONCILE_BATCH]:
            arguments += [organization, str(version), "1" if lapsed else "0"]
        written += int(await client.eval(_COMPARE_AND_SET, 1, LAPSES_KEY, *arguments))
    if written:
        await client.publish(SUSPENSIONS_CHANNEL, RELOAD)
    return written


async def read_lapses(client: redis.Redis) -> dict[str, tuple[int, bool]]:
    """Every organization billing announced: `organizations/{id}` -> (version, lapsed)."""
    entries = await client.hgetall(LAPSES_KEY)
    lapses: dict[str, tuple[int, bool]] = {}
    for key, raw in entries.items():
        parsed = _parse_entry(raw)
        if parsed is not None:
            lapses[key.decode() if isinstance(key, bytes) else str(key)] = parsed
    return lapses


async def read_suspended(client: redis.Redis) -> set[str]:
    """Every lapsed organization (`organizations/{id}`)."""
    return {organization for organization, (_, lapsed) in (await read_lapses(client)).items() if lapsed}
