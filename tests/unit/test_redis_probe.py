"""The readiness probe of Redis: on a cluster it must reach every primary, since the worker writes to every
slot; a cluster client's key-less PING goes to one node only, which answers while another primary is dead."""

import asyncio

import redis.exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from popscore.stream.health import Health, Probes


class OnePrimaryDead(AsyncRedisCluster):
    """A cluster client whose default node answers PING while one of the other primaries refuses connections
    (killed, its replica not promoted yet)."""

    def __init__(self) -> None:  # no connection: only the routing of PING matters here
        self.pinged: list = []

    async def execute_command(self, *args, target_nodes=None, **kwargs):
        assert args == ("PING",)
        self.pinged.append(target_nodes)
        if target_nodes in (AsyncRedisCluster.PRIMARIES, AsyncRedisCluster.ALL_NODES):
            raise redis_errors.ConnectionError("Error 111 connecting to 127.0.0.1:7002. Connection refused.")
        return True  # the default node


class Answers:
    async def ping(self):
        return True


class Committing:
    def commit_health(self):
        return True, "committed"


def probe(client) -> Health:
    health = Health(("redis", "broker", "commits"))
    probes = Probes(health, "127.0.0.1:1", timeout_s=0.2)  # no broker: only the Redis check is looked at
    try:
        asyncio.run(probes.run(client, Committing()))
    finally:
        asyncio.run(probes.close())
    return health


def test_a_dead_primary_fails_the_redis_check_though_the_default_node_answers():
    client = OnePrimaryDead()
    health = probe(client)
    assert not health.ok("redis")
    assert client.pinged == [AsyncRedisCluster.PRIMARIES]


def test_one_redis_is_pinged_as_before():
    assert probe(Answers()).ok("redis")
