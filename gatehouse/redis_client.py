"""Redis clients for every Redis user (L2, the event subscriber, the outbox relay): one
standalone Redis, or a Redis Cluster (`GATEHOUSE_REDIS_CLUSTER=1`).

With cluster mode on, each client is redis-py's cluster-aware `RedisCluster`, started
from the one node the URL names (it learns the others, and follows MOVED/ASK when slots
move). What Gatehouse needs from the cluster, and gets:

- every key of one tenant carries the hash tag `{<tenant id>}` (`events.tenant_tag`), so
  they live in one slot and each Lua script touches one slot only (its keys are declared
  in KEYS, or built inside the script from KEYS[1]'s tag);
- the tenant-event stream is one key, on the master that owns its slot: XADD, XREAD and
  XINFO go there;
- the relay's batch (XADDs and one pointer move per tenant, across slots) is a
  non-transactional pipeline, which the cluster client splits by node.

The mode is the operator's to state, not guessed per connection: `check_mode` asks the
URL's node at start (`INFO cluster`) and refuses to run with the wrong one, since a plain
client on a cluster node gets MOVED for most tenants and a cluster client on a plain
Redis gets nothing at all, both looking like "Redis down" forever.
"""

from __future__ import annotations

import logging
from typing import Union
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gatehouse.redis_failures import REDIS_FAILURES

log = logging.getLogger(__name__)


def shown_url(url: str) -> str:
    """`url` as a log line or an error may show it: a password in it (`redis://:pw@host`,
    `?password=pw`) replaced by `***`."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # not a URL we can read: show nothing of it
        return "<redis url>"
    if password:
        user, _, host = parts.netloc.rpartition("@")
        parts = parts._replace(netloc=f"{user.partition(':')[0]}:***@{host}")
    if "password" in parts.query:
        query = parse_qsl(parts.query, keep_blank_values=True)
        parts = parts._replace(query=urlencode([(k, "***" if k == "password" else v) for k, v in query], safe="*"))
    shown = urlunsplit(parts)
    if "://" in url and "://" not in shown:  # urlunsplit drops the `//` of an empty host (unix://)
        shown = shown.replace(":", "://", 1)
    return shown


def url_passwords(url: str) -> list[str]:
    """The password a URL carries, as written and decoded ([] when none), for the log redactor."""
    try:
        parts = urlsplit(url)
        found = [parts.password or ""] + [v for k, v in parse_qsl(parts.query) if k == "password"]
    except ValueError:
        return []
    return [p for password in found if password for p in {password, unquote(password)}]


# What every Redis user holds; both speak the commands Gatehouse sends.
RedisClient = Union[aioredis.Redis, RedisCluster]


def redis_client(
    url: str, *, cluster: bool, socket_timeout: float, socket_connect_timeout: float, retry: bool = True
) -> RedisClient:
    """A client for `url`: cluster-aware when `cluster`. `retry=False` fails a call at its
    first error (L2: a slow Redis costs one timeout, then the breaker skips it); else
    redis-py's defaults (the cluster client re-learns the slot map and retries a call
    that met a moved slot or a failed-over master)."""
    if cluster:
        if retry:
            return RedisCluster.from_url(
                url, socket_timeout=socket_timeout, socket_connect_timeout=socket_connect_timeout
            )
        return RedisCluster.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_connect_timeout,
            retry=Retry(NoBackoff(), 0),
        )
    if retry:
        return aioredis.Redis.from_url(url, socket_timeout=socket_timeout, socket_connect_timeout=socket_connect_timeout)
    return aioredis.Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_connect_timeout,
        retry_on_timeout=False,
        retry=None,
        health_check_interval=0,
    )


class WrongRedisMode(SystemExit):
    """The URL's node is a cluster node and cluster mode is off, or the reverse."""


async def check_mode(url: str, *, cluster: bool, timeout: float) -> bool | None:
    """Ask the node `url` names whether it is a cluster node (`INFO cluster`), and raise
    WrongRedisMode, saying what to set, when that is not what `cluster` says. Returns
    what the node answered, or None when it did not answer within `timeout` seconds:
    Redis is a cache, and a sidecar starts without it (the check is then skipped)."""
    client = aioredis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=None, retry_on_timeout=False
    )
    try:
        info = await client.info("cluster")
    except REDIS_FAILURES as exc:
        log.warning("redis at %s did not answer INFO cluster (%s): its cluster mode is not checked", shown_url(url), exc)
        return None
    finally:
        await client.aclose()
    enabled = str(info.get("cluster_enabled", 0)) == "1"
    if enabled and not cluster:
        raise WrongRedisMode(
            f"gatehouse: the Redis at {shown_url(url)} is a Redis Cluster node (cluster_enabled:1) but cluster mode is off:"
            " set GATEHOUSE_REDIS_CLUSTER=1 (--redis-cluster) to use it as a cluster"
        )
    if cluster and not enabled:
        raise WrongRedisMode(
            f"gatehouse: GATEHOUSE_REDIS_CLUSTER=1 (--redis-cluster) but the Redis at {shown_url(url)} is not a cluster node"
            " (cluster_enabled:0): unset it to use this standalone Redis, or point GATEHOUSE_REDIS_URL at a"
            " cluster node"
        )
    return enabled
