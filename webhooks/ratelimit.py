"""Per-endpoint rate limits, shared by every worker process through Redis.

An endpoint with `rate_limit = N` receives at most N deliveries in each second of the clock.
A worker about to send k deliveries to it reserves k slots: as many as this second has left,
then the next seconds', up to WEBHOOK_RATE_LIMIT_HORIZON seconds ahead. Deliveries with a slot
in a later second wait in the database, due when it comes (marked as holding their slot);
those beyond the horizon try again after it. Nothing is dropped, and a reserved slot is never
reserved twice, so a backlog is paid for once, not once a second.

Reservations are one Lua script per endpoint and batch (one round trip, atomic across
processes). Redis comes from WEBHOOK_RATE_LIMIT_REDIS_URL, by default the broker when the
broker is Redis. Without Redis (the embedded defaults), or while it cannot be reached, the
same windows are counted in this process only: exact for one worker process, not across
several.
"""

import logging
import math
import threading
import time
from functools import cache

from django.conf import settings

logger = logging.getLogger(__name__)

# KEYS[1]: the endpoint's key prefix. ARGV: first second, limit, slots wanted, seconds ahead.
# Returns [offset, count, offset, count, ...]: slots taken in second `first + offset`.
_RESERVE = """
local first, limit, left, ahead = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {}
for offset = 0, ahead do
  if left <= 0 then break end
  local key = KEYS[1] .. ':' .. (first + offset)
  local take = math.min(left, limit - tonumber(redis.call('GET', key) or '0'))
  if take > 0 then
    redis.call('INCRBY', key, take)
    redis.call('EXPIRE', key, ahead + 10)
    table.insert(out, offset)
    table.insert(out, take)
    left = left - take
  end
end
return out
"""


def reserve(endpoint_id: str, limit: int, count: int) -> list[tuple[float, int]]:
    """Reserve `count` sends to the endpoint; return [(delay in seconds, how many)] in order.
    Their total may fall short of `count`: the rest found no slot within the horizon."""
    now = time.time()
    first = math.floor(now)
    return [(max(0.0, first + offset - now), n) for offset, n in _reserve(endpoint_id, limit, count, first)]


def _reserve(endpoint_id: str, limit: int, count: int, first: int) -> list[tuple[int, int]]:
    client = _redis(settings.WEBHOOK_RATE_LIMIT_REDIS_URL)
    ahead = int(settings.WEBHOOK_RATE_LIMIT_HORIZON)
    if client is not None:
        try:
            flat = _script(client)(keys=[f"webhooks:rate:{endpoint_id}"], args=[first, limit, count, ahead])
            return [(int(flat[i]), int(flat[i + 1])) for i in range(0, len(flat), 2)]
        except Exception as exc:
            # Better a limit per process than no deliveries at all while Redis is away.
            logger.warning("rate limit of %s counted in this process: Redis unavailable (%s)", endpoint_id, exc)
    return _local.reserve(endpoint_id, limit, count, first, ahead)


@cache
def _redis(url: str):
    if not url:
        return None
    import redis

    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)


@cache
def _script(client):
    return client.register_script(_RESERVE)


class _LocalWindows:
    """The script's arithmetic in this process, for when there is no Redis."""

    def __init__(self):
        self.lock = threading.Lock()
        self.used: dict[tuple[str, int], int] = {}

    def reserve(self, endpoint_id, limit, count, first, ahead):
        out = []
        with self.lock:
            for key in [k for k in self.used if k[1] < first]:
                del self.used[key]
            for offset in range(ahead + 1):
                if count <= 0:
                    break
                key = (endpoint_id, first + offset)
                take = min(count, limit - self.used.get(key, 0))
                if take > 0:
                    self.used[key] = self.used.get(key, 0) + take
                    out.append((offset, take))
                    count -= take
        return out


_local = _LocalWindows()
