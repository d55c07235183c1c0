"""Replicas confirm a batch's Redis writes before anything of it is published or acknowledged (``redis.replica_acks``).

A primary acknowledges a write before its replicas have it; one that crashes then is replaced by a replica without
it, while the worker, told OK, has published and committed: the snapshots are lost silently. So, with
``replica_acks`` > 0, before a step's predictions are published and before a batch returns (to be acknowledged),
each primary holding a shard it wrote to must have that many replicas confirm everything it was sent until then.

WAIT waits for the replication offset of the calling connection's last write (Redis 7.0 advances it only for a
command that propagates), not of the primary, so WAIT on a pooled connection that wrote nothing returns at once.
Hence, on each primary, one connection writes the shard's marker (``RedisKeys.replicated``) and then WAITs, in one
round trip: the replication stream is ordered, so replicas that have the marker have every earlier write. There is
no key-less write to use instead: a cluster node sends PUBLISH over the cluster bus, not to its replicas. In a
cluster that connection is one of a client of that node alone, never the cluster client's pipeline, which may
send a redirected command and the WAIT to different nodes. A marker answered MOVED (the slot moved) fails the
attempt like any redirection: transient.

What it does not make: a strongly consistent Redis. A write is lost only if the primary and every confirming
replica fail before another replica or the append-only file has it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable, Iterable

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster as AsyncRedisCluster

from popscore.settings import RedisSettings
from popscore.stream.health import Health
from popscore.stream.metrics import WorkerMetrics
from popscore.stream.redis_client import AsyncClient
from popscore.stream.redis_schema import REPLICATED_TTL_S, RedisKeys

REPLICATION_CHECK = "redis_replication"  # the /readyz check, with replica_acks > 0


class ReplicasBehind(RuntimeError):
    """Fewer replicas than ``replica_acks`` confirmed in time: transient, the batch is retried whole."""


def marker_shards(shards: Iterable[int], primary_of: Callable[[int], Hashable]) -> dict[Hashable, int]:
    """One shard per primary holding any of ``shards`` (the lowest): where the marker goes. One marker per primary
    is enough, its replication stream being ordered."""
    chosen: dict[Hashable, int] = {}
    for shard in sorted(set(shards)):
        chosen.setdefault(primary_of(shard), shard)
    return chosen


class ReplicaAcks:
    def __init__(self, client: AsyncClient, keys: RedisKeys, settings: RedisSettings, health: Health,
                 metrics: WorkerMetrics) -> None:
        self.client = client
        self.keys = keys
        self.replicas = settings.replica_acks
        self.timeout_ms = settings.replica_ack_timeout_ms
        self.health = health
        self.metrics = metrics
        self._node_clients: dict[str, aioredis.Redis] = {}  # a cluster's primaries by name, a pool of its own each
        if self.replicas:
            health.set(REPLICATION_CHECK, True, f"{self.replicas} replica(s) confirm each batch; none asked yet")

    async def confirm(self, shards: Iterable[int]) -> None:
        """Return once every primary holding one of ``shards`` has had its writes so far confirmed by
        ``replica_acks`` replicas; raise ``ReplicasBehind`` if one has not within the timeout."""
        if not self.replicas:
            return
        if isinstance(self.client, AsyncRedisCluster):
            nodes = {}

            def primary_of(shard: int) -> str:
                node = self.client.get_node_from_key(self.keys.tag(shard))
                nodes[node.name] = node
                return node.name

            targets = [(name, self._node_client(nodes[name]), shard)
                       for name, shard in marker_shards(shards, primary_of).items()]
        else:
            targets = [("redis", self.client, shard) for shard in marker_shards(shards, lambda _: None).values()]
        if not targets:
            return
        started = time.perf_counter()
        confirmed = await asyncio.gather(*(self._write_and_wait(client, shard) for _, client, shard in targets))
        self.metrics.replica_wait_seconds.observe(time.perf_counter() - started)
        behind = [f"{name} (shard {shard}): {n}" for (name, _, shard), n in zip(targets, confirmed)
                  if n < self.replicas]
        if behind:
            self.metrics.replica_wait_failures.inc()
            why = (f"fewer than {self.replicas} replica(s) confirmed the writes within {self.timeout_ms} ms on "
                   f"primary {', '.join(behind)}; the batch is retried")
            self.health.set(REPLICATION_CHECK, False, why)
            raise ReplicasBehind(why)
        self.health.set(REPLICATION_CHECK, True, f"{self.replicas} replica(s) confirm each batch")

    async def _write_and_wait(self, client, shard: int) -> int:
        """The marker write and WAIT on one connection (a plain pipeline is one), in one round trip."""
        async with client.pipeline(transaction=False) as pipe:
            pipe.set(self.keys.replicated(shard), int(time.time() * 1000), ex=REPLICATED_TTL_S)
            pipe.execute_command("WAIT", self.replicas, self.timeout_ms)
            _, confirmed = await pipe.execute()
        return int(confirmed)

    def _node_client(self, node: ClusterNode) -> aioredis.Redis:
        client = self._node_clients.get(node.name)
        if client is None:
            pool = aioredis.ConnectionPool(connection_class=node.connection_class, **node.connection_kwargs)
            client = self._node_clients[node.name] = aioredis.Redis.from_pool(pool)
        return client

    async def close(self) -> None:
        for client in self._node_clients.values():
            await client.aclose()
        self._node_clients.clear()
