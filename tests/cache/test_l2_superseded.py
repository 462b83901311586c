"""Superseded revisions do not pile up in L2: the pointer's move deletes the tenant entry
it leaves, data below the pointer is not written, and a read at the pointer still works."""

from __future__ import annotations

import redis.asyncio as aioredis

from gatehouse.cache.l2 import _READ_AT_POINTER
from gatehouse.events import ADVANCE_POINTER, tenant_tag


async def test_moving_the_pointer_deletes_the_old_tenant_entry_and_stale_writes_are_dropped(
    redis_url: str, redis_prefix: str, unique: str
) -> None:
    client = aioredis.Redis.from_url(redis_url)
    write, read = client.register_script(ADVANCE_POINTER), client.register_script(_READ_AT_POINTER)
    tag = tenant_tag(redis_prefix, f"l2sup{unique}")
    pointer, ttl = f"{tag}:rev", "60000"
    try:
        for rev in (1, 2, 3):
            assert await write(keys=[pointer, f"{tag}:t:{rev}"], args=[rev, f"tenant@{rev}", ttl]) == 1
            await write(keys=[pointer, f"{tag}:s:{rev}:user/a"], args=[rev, f"subject@{rev}", ttl])
        assert await client.get(pointer) == b"3"
        assert await client.exists(f"{tag}:t:1", f"{tag}:t:2") == 0  # superseded tenant entries: gone
        assert await client.get(f"{tag}:t:3") == b"tenant@3"
        # A writer that loaded revision 2 late: nothing written, pointer unmoved.
        assert await write(keys=[pointer, f"{tag}:t:2"], args=[2, "tenant@2", ttl]) == 0
        assert await client.exists(f"{tag}:t:2") == 0 and await client.get(pointer) == b"3"
        # The relay moves the pointer without data: the entry it leaves goes too.
        await write(keys=[pointer], args=[4, "", ttl])
        assert await client.exists(f"{tag}:t:3") == 0
        assert await read(keys=[pointer], args=[4, ":t:", ""]) is None  # a miss, not old data
        await write(keys=[pointer, f"{tag}:t:4"], args=[4, "tenant@4", ttl])
        assert await read(keys=[pointer], args=[3, ":t:", ""]) == [b"4", b"tenant@4"]
        assert await read(keys=[pointer], args=[4, ":s:", ":user/a"]) is None
    finally:
        keys = [k async for k in client.scan_iter(match=f"{tag}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
