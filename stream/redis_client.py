"""The Redis client ``redis.mode`` asks for: one Redis, or redis-py's Redis Cluster client, behind one interface.

Both serve the same key layout (``redis_schema``: every script call touches one hash tag), so the stores, the
boards and the tools use either without knowing which. The cluster client routes each command by its keys
(EVALSHA by its KEYS), follows MOVED and ASK, retries TRYAGAIN a few times, and runs a pipeline's commands on
their nodes concurrently. What differs is only the commands about the whole deployment, not a key (memory,
key counts): ``primaries`` and ``on_node`` address them to every primary.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from popscore.settings import RedisSettings

AsyncClient = aioredis.Redis | AsyncRedisCluster
SyncClient = redis.Redis | RedisCluster


def connect(settings: RedisSettings, **options: Any) -> AsyncClient:
    """An asyncio client (created inside the loop that uses it)."""
    options = {"socket_timeout": settings.socket_timeout_s, "socket_connect_timeout": settings.socket_timeout_s,
               **options}
    if settings.mode == "cluster":
        return AsyncRedisCluster.from_url(settings.url, **options)
    return aioredis.Redis.from_url(settings.url, **options)


def connect_sync(settings: RedisSettings, **options: Any) -> SyncClient:
    """A blocking client, for the tools and tests."""
    options = {"socket_timeout": settings.socket_timeout_s, "socket_connect_timeout": settings.socket_timeout_s,
               **options}
    if settings.mode == "cluster":
        return RedisCluster.from_url(settings.url, **options)
    return redis.Redis.from_url(settings.url, **options)


def primaries(client: AsyncClient | SyncClient) -> list:
    """The nodes that hold the data: a cluster's primaries, or [None] for one Redis (``on_node``'s argument)."""
    if isinstance(client, (AsyncRedisCluster, RedisCluster)):
        return client.get_primaries()
    return [None]


async def ping_every_primary(client: AsyncClient) -> None:
    """PING one Redis, or every primary of a cluster. A cluster client sends a key-less PING to one node (its
    default), which answers while another primary is dead and its slots are served by nobody; the worker writes
    to every slot, so its readiness needs every primary."""
    if isinstance(client, AsyncRedisCluster):
        await client.ping(target_nodes=AsyncRedisCluster.PRIMARIES)
    else:
        await client.ping()


async def on_node(client: AsyncClient, node, *command: Any) -> Any:
    """``command`` on one node of ``primaries`` (one Redis: the client's server)."""
    if node is None:
        return await client.execute_command(*command)
    return await client.execute_command(*command, target_nodes=node)


async def repeat_on_node(client: AsyncClient, node, times: int, *command: Any) -> list:
    """``command`` ``times`` times on one node of ``primaries``, in one pipeline."""
    async with client.pipeline(transaction=False) as pipe:
        for _ in range(times):
            if node is None:
                pipe.execute_command(*command)
            else:
                pipe.execute_command(*command, target_nodes=node)
        return await pipe.execute()


async def used_memory(client: AsyncClient) -> tuple[int, int]:
    """(used_memory, maxmemory) of the fullest primary, bytes: the first whose writes fail past its maxmemory
    (``noeviction``); one Redis: its own."""
    fullest = None
    for node in primaries(client):
        info = await on_node(client, node, "INFO", "memory")
        used, limit = int(info["used_memory"]), int(info["maxmemory"])
        fill = used / limit if limit else 0.0
        if fullest is None or fill > fullest[0]:
            fullest = (fill, used, limit)
    return fullest[1], fullest[2]
