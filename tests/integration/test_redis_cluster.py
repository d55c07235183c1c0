"""The worker on a REAL Redis Cluster (three redis-server masters with a replica each on loopback, joined by
`redis-cli --cluster create`, started by the embedded stack with ``redis.mode`` cluster), with Kafka and Triton as
everywhere else.

A stream is replayed in rounds, each waited for. In one test, between two rounds a slot holding live posts is
migrated to another master, and left half-migrated (some of its keys moved, the slot MIGRATING on its owner and
IMPORTING on the target) while the next round is sent, until the worker's batches have failed on it (TRYAGAIN,
ASK) and been retried; then the migration ends (SETSLOT NODE) and the stream goes on. In the other, the master of
a slot holding live posts is failed over to its replica (CLUSTER FAILOVER) as a round is sent. In a third, that
master is killed (SIGKILL) in the middle of a round: its slots are served by nobody until its replica is promoted
(the stack's ``cluster-node-timeout`` is 3 s, short for tests but within what production clusters use; Redis'
default is 15 s), and the worker must say it is not ready meanwhile and retry. With ``redis.replica_acks`` 1 (what
the stack sets with replicas), a batch waits until a replica has its writes: while a master's replica is paused
nothing of its shards is published or acknowledged, and a master killed before its replica got a batch's writes
loses none of them (the batch is retried on the promoted replica). Afterwards nothing may be lost on the outputs:
every snapshot in its post's sequence exactly once, each round's latest observation of each post predicted on the
predictions topic, every post's latest prediction in Redis, and the platform's board (read through the worker's
``/leaderboard``, merged from the shards on the three nodes) listing every post with its latest predicted score.
Then: a dead master makes even an idle worker unready (the probe covers every primary), and the stack stops with
nodes dead.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections import defaultdict
from datetime import datetime, timezone

import pytest
import redis
from redis.crc import key_slot

from popscore.settings import Settings
from popscore.stream.redis_schema import RedisKeys, decode_sequence
from popscore.stream.replication import REPLICATION_CHECK
from tests.conftest import MODEL_REPO
from tests.integration.kafka_io import committed_offsets
from tests.integration.outcomes import (Traffic, check_nothing_lost, iso, metric, read_all, redis_of, send_posts,
                                        send_snapshots, wait_processed, web_json)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster_stack(tmp_path_factory):
    """The embedded stack with a Redis Cluster of three masters and three replicas instead of one Redis."""
    from popscore.tools.stack.stack import EmbeddedStack

    settings = Settings()
    settings.redis.mode = "cluster"
    settings.stack.redis_cluster_replicas = 1
    settings.stack.run_dir = tmp_path_factory.mktemp("cluster") / "run"
    settings.stack.model_repo = MODEL_REPO
    settings.serving.unknown_platform = "hackernews"  # the test's own platform is scored by a model (Triton)
    settings.worker.max_batch_snapshots = 16  # a round spans several steps, so several calls per shard
    settings.worker.window_snapshots = 40
    stack = EmbeddedStack(settings)
    stack.start(with_worker=True)
    yield stack
    stack.stop()


def check_rounds_predicted_and_board(stack, traffic, rounds) -> None:
    """Each round's latest observation of each post has its prediction on the topic (the rounds were waited for,
    so none was folded into the next round's), and the platform's board, merged by the worker from the shards'
    boards on the masters, lists every post with the score of its latest prediction, best first."""
    settings, bootstrap = stack.settings, stack.state.endpoints_obj().broker_bootstrap
    predicted = received(read_all(settings, bootstrap, settings.kafka.topics.predictions), traffic.prefix)
    for part in rounds:
        latest = {}
        for post_id, at, _ in part:
            latest[post_id] = max(at, latest.get(post_id, 0))
        missing = {p: iso(datetime.fromtimestamp(t, timezone.utc)) for p, t in latest.items()
                   if t not in predicted.get(p, {})}
        assert not missing, f"observations without a prediction: {missing}"
    status, board = web_json(stack, f"/leaderboard?board=top:platform:{traffic.prefix}&k=100")
    assert status == 200, board
    last = {p: by_time[max(by_time)] for p, by_time in predicted.items()}
    assert sorted(entry["post_id"] for entry in board["entries"]) == sorted(traffic.post_ids)
    assert {entry["post_id"]: entry["value"] for entry in board["entries"]} == pytest.approx(last)
    values = [entry["value"] for entry in board["entries"]]
    assert values == sorted(values, reverse=True)


def send_later_rounds(stack, rounds) -> None:
    """The rounds after the first two, each sent once the worker has committed everything before it (so none
    is folded into the next)."""
    settings, bootstrap = stack.settings, stack.state.endpoints_obj().broker_bootstrap
    wait_processed(settings, bootstrap)
    for part in rounds[2:]:
        send_snapshots(stack, part)
        wait_processed(settings, bootstrap)


def check_fault_outputs(stack, traffic, rounds, during: str = "during the fault") -> dict:
    """No record of the traffic dead-lettered, every snapshot stored once and predicted, each round's latest
    observation predicted and the board complete; the figures of ``check_nothing_lost``."""
    settings, bootstrap = stack.settings, stack.state.endpoints_obj().broker_bootstrap
    letters = [m for m in read_all(settings, bootstrap, settings.kafka.topics.deadletter)
               if m.key and m.key.decode().startswith(traffic.prefix + "-")]
    assert not letters, f"a record was dead-lettered {during}"
    figures = check_nothing_lost(stack, traffic)
    check_rounds_predicted_and_board(stack, traffic, rounds)
    return figures


def test_the_stack_starts_a_cluster_whose_every_slot_is_served(cluster_stack):
    endpoints = cluster_stack.state.endpoints_obj()
    assert endpoints.redis_mode == "cluster" and len(endpoints.redis_cluster_nodes) == 6
    for port, _ in endpoints.redis_cluster_nodes:
        info = node(endpoints.host, port).cluster("info")
        assert info["cluster_state"] == "ok" and int(info["cluster_slots_assigned"]) == 16384
        assert int(info["cluster_known_nodes"]) == 6 and int(info["cluster_size"]) == 3  # masters serving slots
    assert len(masters(endpoints)) == 3


# --- moving a slot by hand, as `redis-cli --cluster reshard` does ---------------------------------------------

def node(host: str, port: int) -> redis.Redis:
    return redis.Redis(host=host, port=port, socket_timeout=10)


def masters(endpoints) -> dict[str, redis.Redis]:
    """node id -> a client of that node, for the masters."""
    clients = [node(endpoints.host, port) for port, _ in endpoints.redis_cluster_nodes]
    return {client.execute_command("CLUSTER", "MYID").decode(): client for client in clients
            if client.execute_command("ROLE")[0] == b"master"}


def replica_of(master: redis.Redis, master_id: str) -> redis.Redis:
    line = master.execute_command("CLUSTER", "REPLICAS", master_id)[0]  # "<id> <host>:<port>@<bus> slave ..."
    host, port = line.split()[1].decode().split("@")[0].rsplit(":", 1)
    return node(host, int(port))


def owner(nodes: dict[str, redis.Redis], slot: int) -> str:
    for node_id, client in nodes.items():
        if client.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) > 0:
            return node_id
    raise AssertionError(f"no node holds keys of slot {slot}")


def redirections(nodes: dict[str, redis.Redis], codes=("ASK", "TRYAGAIN")) -> int:
    """The replies of ``codes`` the nodes have sent (INFO errorstats): ASK and TRYAGAIN answer calls that hit a
    migrating slot, MOVED calls sent to a node that no longer serves the slot."""
    total = 0
    for client in nodes.values():
        stats = client.info("errorstats")
        total += sum(stats.get(f"errorstat_{code}", {}).get("count", 0) for code in codes)
    return total


def migrate_keys(source: redis.Redis, target: redis.Redis, slot: int, limit: int | None = None) -> int:
    """MIGRATE the slot's keys (up to ``limit``) from ``source`` to ``target``; the number moved."""
    host, port = target.connection_pool.connection_kwargs["host"], target.connection_pool.connection_kwargs["port"]
    moved = 0
    while limit is None or moved < limit:
        count = 10 if limit is None else min(10, limit - moved)
        keys = source.execute_command("CLUSTER", "GETKEYSINSLOT", slot, count)
        if not keys:
            break
        source.migrate(host, port, keys, 0, 10_000)
        moved += len(keys)
    return moved


def transient_failures(stack) -> float:
    """The worker's batch failures it took as transient (retried whole), from its /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    url = stack.state.endpoints_obj().as_dict()["worker_metrics"]
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "popscore_batch_failures_total" and sample.labels.get("kind") == "transient")


def received(messages, prefix: str) -> dict[str, dict[int, float]]:
    """post_id -> {as_of (epoch s): score} of the temporal predictions on the topic."""
    out: dict[str, dict[int, float]] = defaultdict(dict)
    for message in messages:
        if message.key and message.key.decode().startswith(prefix + "-"):
            record = json.loads(message.value)
            if record["model"] == "temporal":
                as_of = int(datetime.fromisoformat(record["as_of"].replace("Z", "+00:00")).timestamp())
                out[record["post_id"]][as_of] = record["score"]
    return out


def first_round_stored(cluster_stack, prefix: str):
    """Posts and the first round of their snapshots processed: the stream the fault happens in the middle of."""
    settings, endpoints = cluster_stack.settings, cluster_stack.state.endpoints_obj()
    traffic = Traffic(prefix, n_posts=60, n_snapshots=8)
    rounds = traffic.rounds(4)
    send_posts(cluster_stack, traffic)
    send_snapshots(cluster_stack, rounds[0])
    wait_processed(settings, endpoints.broker_bootstrap)
    return settings, endpoints, traffic, rounds


def busiest_shard(keys: RedisKeys, post_ids) -> tuple[int, int, int]:
    """(shard, its posts, its slot) of the shard holding the most posts."""
    posts_per_shard = defaultdict(int)
    for post_id in post_ids:
        posts_per_shard[keys.shard(post_id)] += 1
    shard = max(posts_per_shard, key=posts_per_shard.get)
    return shard, posts_per_shard[shard], key_slot(keys.tag(shard).encode())


def test_a_slot_migrated_in_the_middle_of_a_stream_loses_nothing(cluster_stack):
    settings, endpoints, traffic, rounds = first_round_stored(cluster_stack, "clustermove")
    keys = RedisKeys.of(settings)

    # The slot of the shard with the most posts, from its master to another one.
    shard, shard_posts, slot = busiest_shard(keys, traffic.post_ids)
    nodes = masters(endpoints)
    source_id = owner(nodes, slot)
    target_id = next(node_id for node_id in nodes if node_id != source_id)
    source, target = nodes[source_id], nodes[target_id]
    in_slot = source.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot)
    assert in_slot >= 2 * shard_posts  # each post's sequence and hash, and the shard's sets and boards

    target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
    source.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
    migrate_keys(source, target, slot, limit=in_slot // 2)  # half-way: the shard's keys are split
    before, failed_before = redirections(nodes), transient_failures(cluster_stack)
    retries = settings.worker.batch_attempts + 1  # more than an error that is not transient gets
    send_snapshots(cluster_stack, rounds[1])
    # The worker's calls reach the slot while it moves (a call whose keys are split between the two masters is
    # answered TRYAGAIN until the slot has moved), and its batch fails as a transient one, retried whole as often
    # as it takes, where another error would be split and its records dead-lettered.
    deadline = time.monotonic() + 90
    while redirections(nodes) == before or transient_failures(cluster_stack) < failed_before + retries:
        assert time.monotonic() < deadline, \
            "the worker's batches did not hit the migrating slot, or their failures were not taken as transient"
        time.sleep(0.2)
    hit = redirections(nodes) - before
    migrate_keys(source, target, slot)
    for client in nodes.values():  # the slot is the target's, on every master
        client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    send_later_rounds(cluster_stack, rounds)

    assert source.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
    assert target.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) >= in_slot
    figures = check_fault_outputs(cluster_stack, traffic, rounds, "while the slot moved")
    client = redis_of(cluster_stack)
    assert {keys.shard(p) for p in traffic.post_ids} == set(keys.all_shards)  # the posts span every shard
    print(f"slot {slot} (shard {shard}, {shard_posts} posts, {in_slot} keys) moved mid-stream; "
          f"{hit} calls answered ASK/TRYAGAIN while it moved; {figures}; "
          f"{len(client.get_primaries())} masters")


def test_a_master_failed_over_in_the_middle_of_a_stream_loses_nothing(cluster_stack):
    settings, endpoints, traffic, rounds = first_round_stored(cluster_stack, "clusterfailover")
    keys = RedisKeys.of(settings)

    _, _, slot = busiest_shard(keys, traffic.post_ids)
    nodes = masters(endpoints)
    master_id = owner(nodes, slot)
    old_master = nodes[master_id]
    replica = replica_of(old_master, master_id)
    moved_before = redirections({master_id: old_master}, ("MOVED",))
    send_snapshots(cluster_stack, rounds[1])
    replica.execute_command("CLUSTER", "FAILOVER")  # coordinated: the master hands over once the replica caught up
    deadline = time.monotonic() + 60
    while replica.execute_command("ROLE")[0] != b"master":
        assert time.monotonic() < deadline, "the replica did not take over"
        time.sleep(0.1)
    send_later_rounds(cluster_stack, rounds)

    assert old_master.execute_command("ROLE")[0] == b"slave"
    assert replica.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) > 0
    # the worker went on writing the slot, to the old master first (answered MOVED), then to the new one
    assert redirections({master_id: old_master}, ("MOVED",)) > moved_before
    figures = check_fault_outputs(cluster_stack, traffic, rounds, "while the master failed over")
    print(f"slot {slot}'s master failed over to its replica mid-stream; {figures}")


# --- a master that crashes -----------------------------------------------------------------------------------

def process_of(stack, port: int) -> str:
    """The stack's process name of the cluster node listening on ``port``."""
    return next(name for name, info in stack.state.processes.items() if info.get("port") == port)


def readiness(stack) -> tuple[int, dict]:
    return web_json(stack, "/readyz")


def wait_until(condition, timeout_s: float, what: str) -> float:
    """Poll ``condition`` until it holds; the seconds it took. Fails after ``timeout_s``."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, f"not within {timeout_s:g}s: {what}"
        time.sleep(0.1)
    return time.monotonic() - started


def test_a_master_killed_in_the_middle_of_a_stream_loses_nothing(cluster_stack):
    """SIGKILL, not a handover: until a replica is promoted (``cluster-node-timeout``, then an election) the
    dead master's slots answer nothing, the other nodes CLUSTERDOWN. The worker must retry its batches (transient),
    say it is not ready meanwhile, and afterwards nothing may be missing or doubled on the outputs."""
    from popscore.tools.stack.process import group_alive

    settings, endpoints, traffic, rounds = first_round_stored(cluster_stack, "clustercrash")
    keys = RedisKeys.of(settings)
    worker_pgid = int(cluster_stack.state.processes["worker"]["pid"])

    _, shard_posts, slot = busiest_shard(keys, traffic.post_ids)
    nodes = masters(endpoints)
    master_id = owner(nodes, slot)
    victim = nodes[master_id]
    victim_port = victim.connection_pool.connection_kwargs["port"]
    victim_name = process_of(cluster_stack, victim_port)
    replica = replica_of(victim, master_id)
    failed_before = transient_failures(cluster_stack)
    assert readiness(cluster_stack)[0] == 200

    # Half of a round is in flight when the master dies; the other half is sent while its slots are served by
    # nobody, so the worker's writes to them certainly fail.
    half = len(rounds[1]) // 2
    send_snapshots(cluster_stack, rounds[1][:half])
    cluster_stack.kill_component(victim_name)  # SIGKILL; returns once the process is gone
    killed_at = time.monotonic()
    send_snapshots(cluster_stack, rounds[1][half:])

    # While nothing serves the slot, the worker is not ready (its agent retries, or its Redis probe fails)...
    unready = {}

    def not_ready() -> bool:
        status, body = readiness(cluster_stack)
        for check, why in (body.get("failing", {}) if status == 503 else {}).items():
            unready.setdefault(check, why["detail"])
        return status == 503

    wait_until(not_ready, 30, "readiness to report the worker not ready while a master is dead")
    # ... a replica takes over after cluster-node-timeout and an election ...
    wait_until(lambda: not_ready() is not None and replica.execute_command("ROLE")[0] == b"master", 60,
               "the dead master's replica to be promoted")
    promoted_s = time.monotonic() - killed_at
    # ... the killed node comes back with its data and rejoins as a replica of its old replica (the promoted master
    # has none until then, and with replica_acks 1 its batches wait for one) ...
    cluster_stack.start_component(victim_name)
    assert node(endpoints.host, victim_port).execute_command("ROLE")[0] == b"slave"
    # ... and the worker is ready again, its retried batch through.
    wait_until(lambda: readiness(cluster_stack)[0] == 200, 60, "readiness back after the failover")
    send_later_rounds(cluster_stack, rounds)

    assert group_alive(worker_pgid), "the worker exited during the outage"
    assert int(cluster_stack.state.processes["worker"]["pid"]) == worker_pgid
    assert transient_failures(cluster_stack) > failed_before, "no batch of the worker hit the dead master"
    assert replica.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) > 0
    figures = check_fault_outputs(cluster_stack, traffic, rounds, "while the master was dead")
    print(f"master of slot {slot} ({shard_posts} posts) killed mid-stream: replica promoted "
          f"{promoted_s:.1f}s after the kill; "
          f"failing meanwhile: {unready}; killed {victim_name}; {figures}")


# --- replicas confirm a batch's writes (redis.replica_acks 1, the stack's default with replicas) ----------------

def paused_shards_target(stack, keys: RedisKeys, post_ids) -> tuple[str, redis.Redis, redis.Redis, set[int]]:
    """(id, client) of the master of the busiest shard, a client of its replica, and every shard that master
    holds: the ones whose batches wait while that replica does not answer."""
    _, _, slot = busiest_shard(keys, post_ids)
    nodes = masters(stack.state.endpoints_obj())
    master_id = owner(nodes, slot)
    master = nodes[master_id]
    port = master.connection_pool.connection_kwargs["port"]
    cluster = redis_of(stack)
    held = {shard for shard in keys.all_shards if cluster.get_node_from_key(keys.tag(shard)).port == port}
    return master_id, master, replica_of(master, master_id), held


def replica_read(replica: redis.Redis, key: str) -> bytes | None:
    """GET on a replica (READONLY first, on the same connection: a cluster replica redirects reads otherwise)."""
    with replica.pipeline(transaction=False) as pipe:
        pipe.execute_command("READONLY")
        pipe.get(key)
        return pipe.execute()[1]


def committed(settings, bootstrap: str) -> dict[int, int]:
    topics = settings.kafka.topics
    return asyncio.run(committed_offsets(bootstrap, settings.worker.app_id, topics.snapshots, topics.partitions))


def test_a_batch_is_neither_published_nor_acknowledged_until_a_replica_has_its_writes(cluster_stack):
    """The replica of a shard's master paused (SIGSTOP): the master takes the batch's writes but cannot have them
    confirmed, so no prediction of its shards' posts is published, their partitions' offsets stay where they were,
    and /readyz says why. Resumed: every snapshot stored once, predicted and on the board, none dead-lettered."""
    settings, endpoints, traffic, rounds = first_round_stored(cluster_stack, "replicawait")
    bootstrap = endpoints.broker_bootstrap
    keys = RedisKeys.of(settings)
    _, master, replica, held = paused_shards_target(cluster_stack, keys, traffic.post_ids)
    replica_name = process_of(cluster_stack, replica.connection_pool.connection_kwargs["port"])
    waiting = {(post_id, at) for post_id, at, _ in rounds[1] if keys.shard(post_id) in held}
    assert waiting, "the round has no snapshot of the master's shards"
    offsets_before = committed(settings, bootstrap)
    failed_before = metric(cluster_stack, "popscore_redis_replica_wait_failures_total")
    transient_before = transient_failures(cluster_stack)

    cluster_stack.pause_component(replica_name)
    try:
        send_snapshots(cluster_stack, rounds[1])
        # The positive event: a batch was written and then failed for want of the replica's confirmation, as a
        # transient failure, and readiness names the reason.
        wait_until(lambda: metric(cluster_stack, "popscore_redis_replica_wait_failures_total") > failed_before
                   and transient_failures(cluster_stack) > transient_before
                   and REPLICATION_CHECK in readiness(cluster_stack)[1].get("failing", {}), 30,
                   "a batch failing on the replica's confirmation, and readiness saying so")
        stored = [at for post_id, at in waiting
                  if at in decode_sequence(master.get(keys.sequence(post_id)) or b"")[:, 0]]
        predicted = received(read_all(settings, bootstrap, settings.kafka.topics.predictions), traffic.prefix)
        offsets_paused = committed(settings, bootstrap)
        status, body = readiness(cluster_stack)
    finally:
        cluster_stack.resume_component(replica_name)
    assert stored, "the master does not hold the waiting batch's writes"
    published = sorted((post_id, at) for post_id, at in waiting if at in predicted.get(post_id, {}))
    assert not published, f"predictions published before a replica confirmed their writes: {published}"
    assert {p: offsets_paused[p] for p in held} == {p: offsets_before[p] for p in held}, \
        "an offset of the master's shards was committed before a replica confirmed the writes"
    assert status == 503 and "replica" in body["failing"][REPLICATION_CHECK]["detail"], body

    send_later_rounds(cluster_stack, rounds)
    figures = check_fault_outputs(cluster_stack, traffic, rounds, "while the replica was paused")
    wait_until(lambda: readiness(cluster_stack)[0] == 200, 30, "readiness back once the replica confirms")
    print(f"replica of shards {sorted(held)} paused: {len(waiting)} snapshots held back, {len(stored)} of them "
          f"on the master meanwhile; {figures}")


def test_a_master_lost_before_its_replica_had_the_writes_loses_no_snapshot(cluster_stack):
    """The window replica_acks closes. The replica of a shard's master is cut off (paused, its link closed), a
    round is sent and written to the master alone, then the master dies (SIGKILL) and the replica, resumed, takes
    over (CLUSTER FAILOVER TAKEOVER) without those writes. The batch was never acknowledged, so it is retried
    against the new master and every snapshot ends up stored and predicted. (With replica_acks 0 the batch is
    acknowledged as soon as the master has it, and the promoted replica never gets those snapshots:
    check_nothing_lost fails.)"""
    settings, endpoints, traffic, rounds = first_round_stored(cluster_stack, "replicaloss")
    bootstrap = endpoints.broker_bootstrap
    keys = RedisKeys.of(settings)
    master_id, master, replica, held = paused_shards_target(cluster_stack, keys, traffic.post_ids)
    master_name = process_of(cluster_stack, master.connection_pool.connection_kwargs["port"])
    replica_name = process_of(cluster_stack, replica.connection_pool.connection_kwargs["port"])
    waiting = {(post_id, at) for post_id, at, _ in rounds[1] if keys.shard(post_id) in held}
    failed_before = metric(cluster_stack, "popscore_redis_replica_wait_failures_total")

    def on_master() -> list[tuple[str, int]]:
        return [(post_id, at) for post_id, at in waiting
                if at in decode_sequence(master.get(keys.sequence(post_id)) or b"")[:, 0]]

    def written_and_decided() -> bool:
        """Some of the round is on the master, and the worker went past its writes: a confirmation refused the
        batch, or (replica_acks 0) the written snapshots' predictions are published."""
        stored = on_master()
        if not stored:
            return False
        if metric(cluster_stack, "popscore_redis_replica_wait_failures_total") > failed_before:
            return True
        predicted = received(read_all(settings, bootstrap, settings.kafka.topics.predictions), traffic.prefix)
        return all(at in predicted.get(post_id, {}) for post_id, at in stored)

    # The replica cut off: paused, and its link closed by the master (a paused process would still find in its
    # socket buffer what the master sent it, and apply it on resuming).
    cluster_stack.pause_component(replica_name)
    try:
        master.execute_command("CLIENT", "KILL", "TYPE", "replica")
        send_snapshots(cluster_stack, rounds[1])
        wait_until(written_and_decided, 30, "the round's snapshots written to the master, and refused or published")
        written = on_master()
        cluster_stack.kill_component(master_name)
    finally:
        cluster_stack.resume_component(replica_name)
    missing = [(post_id, at) for post_id, at in written
               if at not in decode_sequence(replica_read(replica, keys.sequence(post_id)) or b"")[:, 0]]
    assert missing, "the paused replica got the writes: the failover would not test the window"
    replica.execute_command("CLUSTER", "FAILOVER", "TAKEOVER")
    wait_until(lambda: replica.execute_command("ROLE")[0] == b"master", 30, "the replica to take over")
    cluster_stack.start_component(master_name)  # rejoins as its replica: the new master's batches need one
    send_later_rounds(cluster_stack, rounds)
    figures = check_fault_outputs(cluster_stack, traffic, rounds, "while the master was lost")
    print(f"master {master_id[:8]} of shards {sorted(held)} killed with {len(missing)} snapshots its replica never "
          f"got; after the takeover: {figures}")


def test_a_dead_master_makes_an_idle_worker_unready_until_its_replica_takes_over(cluster_stack):
    """With no batch in flight only the Redis probe can tell that a master's slots are served by nobody, so it
    must cover every master, not only the one the client sends key-less commands to (the node of slot 0)."""
    endpoints = cluster_stack.state.endpoints_obj()
    default_port = redis_of(cluster_stack).nodes_manager.get_node_from_slot(0).port
    nodes = masters(endpoints)
    victim_id, victim = next((node_id, client) for node_id, client in nodes.items()
                             if client.connection_pool.connection_kwargs["port"] != default_port)
    victim_port = victim.connection_pool.connection_kwargs["port"]
    victim_name = process_of(cluster_stack, victim_port)
    replica = replica_of(victim, victim_id)
    wait_until(lambda: readiness(cluster_stack)[0] == 200, 60, "the worker ready before the fault")

    cluster_stack.kill_component(victim_name)
    try:
        wait_until(lambda: "redis" in readiness(cluster_stack)[1].get("failing", {}), 30,
                   f"readiness to report Redis failing with {victim_name} dead")
        wait_until(lambda: replica.execute_command("ROLE")[0] == b"master", 60, "the replica to be promoted")
        wait_until(lambda: readiness(cluster_stack)[0] == 200, 60, "readiness back once the replica serves")
    finally:
        cluster_stack.start_component(victim_name)


def test_the_stack_stops_with_a_master_dead(cluster_stack):
    """`popscore down` after a master and its replica crashed (its slots served by nobody for good): the dead
    nodes' stale pids are skipped, the others stop (the worker in the middle of retrying a batch against the dead
    slots, which its stop must not wait for), and nothing is left running. Stops the module's stack, so it runs
    last."""
    from popscore.tools.stack.process import group_alive

    endpoints = cluster_stack.state.endpoints_obj()
    keys = RedisKeys.of(cluster_stack.settings)
    port = redis_of(cluster_stack).nodes_manager.get_node_from_slot(key_slot(keys.tag(keys.all_shards[0]).encode())).port
    master_id, master = next((node_id, client) for node_id, client in masters(endpoints).items()
                             if client.connection_pool.connection_kwargs["port"] == port)  # serves a shard
    dead = {process_of(cluster_stack, client.connection_pool.connection_kwargs["port"])
            for client in (master, replica_of(master, master_id))}
    for name in dead:
        cluster_stack.kill_component(name)
    failed_before = transient_failures(cluster_stack)
    send_snapshots(cluster_stack, Traffic("clusterdown", n_posts=30, n_snapshots=2).snapshots)  # no posts: waiting
    pgids = {name: int(info["pid"]) for name, info in cluster_stack.state.processes.items()}
    wait_until(lambda: readiness(cluster_stack)[0] == 503 and transient_failures(cluster_stack) > failed_before, 30,
               "the worker retrying a batch, unready, with a master dead")

    started = time.monotonic()
    running = cluster_stack.stop()
    took = time.monotonic() - started
    assert sorted(running) == sorted(set(pgids) - dead), "a dead node counted as running, or a live one not stopped"
    left = {name: pgid for name, pgid in pgids.items() if group_alive(pgid)}
    assert not left, f"still running after stop: {left}"
    # The worker ends its retries at SIGTERM and exits without acknowledging the batch (batch_runner.py), well
    # before the stack would kill it (stop_timeout_s): Faust's graceful stop alone would wait for the batch.
    assert took < cluster_stack.settings.stack.stop_timeout_s, f"stopping took {took:.1f}s"
    print(f"stack stopped in {took:.1f}s with {sorted(dead)} dead; stopped {sorted(running)}")
