"""What fault and fuzz tests send and what they check afterwards: the outputs, not only the stored state.

``Traffic`` is a set of synthetic posts (one platform of the test's own, so its leaderboard holds exactly them;
it has no model set, so a stack scores it with a model only where ``serving.unknown_platform`` names one) with
snapshots at increasing times. ``check_nothing_lost`` waits until every snapshot is in its post's Redis
sequence exactly once, every post has a temporal prediction on the predictions topic as of its latest
observation, the post's latest prediction in Redis is as of it, and the platform's leaderboard lists every post.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from popscore.stream.redis_client import SyncClient, connect_sync
from popscore.stream.redis_schema import RedisKeys, decode_sequence, platform_board, prediction_field
from popscore.tools.replay import batch_envelope
from tests.integration.kafka_io import (consume_until, partition_of, produce, produce_to_partitions, read_topic,
                                        wait_committed)


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@dataclass
class Traffic:
    prefix: str  # also the platform: lower case letters and digits
    n_posts: int = 20
    n_snapshots: int = 6
    posts: list[tuple[bytes, bytes]] = field(default_factory=list)  # (key, value)
    snapshots: list[tuple[str, int, bytes]] = field(default_factory=list)  # (post_id, observed_at, value)

    def __post_init__(self) -> None:
        start = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=3)
        for i in range(self.n_posts):
            post_id = f"{self.prefix}-{i}"
            self.posts.append((post_id.encode(), json.dumps({
                "schema": "post.v1", "post_id": post_id, "platform": self.prefix, "created_at": iso(start),
                "text": {"title": f"post {i} of {self.prefix}"}}).encode()))
            for k in range(self.n_snapshots):
                at = start + timedelta(minutes=10 * (k + 1) + i % 7)
                value = json.dumps({"schema": "snapshot.v1", "post_id": post_id, "observed_at": iso(at),
                                    "counts": {"likes": (k + 1) * (i + 1), "comments": k * i, "shares": k}})
                self.snapshots.append((post_id, int(at.timestamp()), value.encode()))

    @property
    def post_ids(self) -> list[str]:
        return [key.decode() for key, _ in self.posts]

    def rounds(self, n: int) -> list[list[tuple[str, int, bytes]]]:
        """The snapshots in ``n`` parts, each part later in time than the one before."""
        ordered = sorted(self.snapshots, key=lambda s: s[1])
        size = -(-len(ordered) // n)
        return [ordered[i:i + size] for i in range(0, len(ordered), size)]


def redis_of(stack) -> SyncClient:
    """A client of the stack's Redis: one Redis, or its Redis Cluster."""
    endpoints = stack.state.endpoints_obj()
    return connect_sync(stack.settings.redis.model_copy(update={"url": endpoints.redis_url,
                                                                "mode": endpoints.redis_mode}))


def board_members(client: SyncClient, keys: RedisKeys, board: str) -> set[str]:
    """Every member of a board: the union of its shards' sorted sets."""
    return {m.decode() for shard in keys.all_shards for m in client.zrange(keys.board(board, shard), 0, -1)}


def send_posts(stack, traffic: Traffic, timeout_s: float = 60.0) -> None:
    """Produce the posts and wait until each has its static prediction (so a fault injected next hits the
    snapshots' path)."""
    endpoints = stack.state.endpoints_obj()
    asyncio.run(produce(endpoints.broker_bootstrap, stack.settings.kafka.topics.posts, traffic.posts))
    client = redis_of(stack)
    keys = list(map(RedisKeys.of(stack.settings).post, traffic.post_ids))
    deadline = time.monotonic() + timeout_s
    while not all(client.hexists(key, prediction_field("static")) for key in keys):
        assert time.monotonic() < deadline, "posts without a static prediction"
        time.sleep(0.2)


def send_snapshots(stack, snapshots: list[tuple[str, int, bytes]], envelopes: bool = False) -> None:
    """Single keyed records, or one envelope per partition (as the replay sends them)."""
    settings, endpoints = stack.settings, stack.state.endpoints_obj()
    topic, partitions = settings.kafka.topics.snapshots, settings.kafka.topics.partitions
    if not envelopes:
        asyncio.run(produce(endpoints.broker_bootstrap, topic, [(p.encode(), v) for p, _, v in snapshots]))
        return
    by_partition = defaultdict(list)
    for post_id, _, value in snapshots:
        by_partition[partition_of(post_id.encode(), partitions)].append(value)
    asyncio.run(produce_to_partitions(endpoints.broker_bootstrap, topic,
                                      [(p, batch_envelope(lines)) for p, lines in by_partition.items()]))


def check_nothing_lost(stack, traffic: Traffic, timeout_s: float = 120.0) -> dict:
    """Wait for the outputs of ``traffic``; assert every snapshot stored once and every post's latest observation
    predicted (topic, post hash, leaderboard). Returns figures for the test's report."""
    expected: dict[str, list[int]] = defaultdict(list)
    for post_id, at, _ in traffic.snapshots:
        expected[post_id].append(at)
    return check_outputs(stack, expected, traffic.prefix, timeout_s)


def check_outputs(stack, expected: dict[str, list[int]], platform: str | None, timeout_s: float = 120.0) -> dict:
    """``expected``: the observation times sent per post (each stored once however often it was sent). With
    ``platform``, that platform's leaderboard must list every post."""
    settings, endpoints = stack.settings, stack.state.endpoints_obj()
    keys = RedisKeys.of(settings)
    client = redis_of(stack)
    expected = {p: sorted(set(times)) for p, times in expected.items()}
    latest = {p: max(times) for p, times in expected.items()}
    started = time.monotonic()

    def stored_times(post_id: str) -> list[int]:
        return decode_sequence(client.get(keys.sequence(post_id)) or b"")[:, 0].astype(int).tolist()

    def predicted_to(post_id: str) -> int | None:
        view = client.hget(keys.post(post_id), prediction_field("temporal"))
        if view is None:
            return None
        as_of = json.loads(view)["as_of"]
        return int(datetime.fromisoformat(as_of.replace("Z", "+00:00")).timestamp())

    def board() -> set[str]:
        if platform is None:
            return set(expected)
        return board_members(client, keys, platform_board(platform))

    def done() -> bool:
        return (all(stored_times(p) == expected[p] for p in expected)
                and all(predicted_to(p) == latest[p] for p in expected) and board() >= set(expected))

    deadline = started + timeout_s
    while time.monotonic() < deadline and not done():
        time.sleep(0.25)
    recovered_s = time.monotonic() - started
    for post_id, times in expected.items():
        assert stored_times(post_id) == times, f"{post_id}: stored {stored_times(post_id)}, sent {times}"
    assert {p: predicted_to(p) for p in expected} == latest
    assert board() >= set(expected)

    want = {p: iso(datetime.fromtimestamp(t, timezone.utc)) for p, t in latest.items()}
    messages = asyncio.run(consume_until(
        endpoints.broker_bootstrap, settings.kafka.topics.predictions,
        lambda ms: _covered(ms, want), timeout_s=30))
    assert _covered(messages, want), "a post's latest observation has no prediction on the predictions topic"
    return {"posts": len(expected), "observations": sum(map(len, expected.values())),
            "recovered_s": round(recovered_s, 1)}


def _covered(messages, want: dict[str, str]) -> bool:
    seen = set()
    for message in messages:
        if message.key is not None and message.key.decode() in want:
            record = json.loads(message.value)
            if record["model"] == "temporal" and record["as_of"] == want[record["post_id"]]:
                seen.add(record["post_id"])
    return seen == set(want)


def metric(stack, name: str) -> float:
    """The sum of a metric's samples (all label sets) on the worker's /metrics."""
    url = stack.state.endpoints_obj().as_dict()["worker_metrics"]
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and (len(line) > len(name) and line[len(name)] in " {"))


# --- barriers and known state -------------------------------------------------------------------------------

def wait_processed(settings, bootstrap: str, timeout_s: float = 120.0) -> None:
    """The barrier before a negative assertion: returns once the worker's consumer group has committed every
    record now in the posts and snapshots topics. The worker acknowledges a batch only after its outputs are in
    Kafka and Redis (predictions, dead letters, sequences, the awaiting set), so whatever those records cause is
    visible when this returns, however slow the worker was; what is not there then never comes from them. (Timers
    are not covered: the grace-period scan scores waiting posts on its own clock.)"""
    topics = settings.kafka.topics
    asyncio.run(wait_committed(bootstrap, settings.worker.app_id, [topics.posts, topics.snapshots],
                               topics.partitions, timeout_s))


def read_all(settings, bootstrap: str, topic: str) -> list:
    """Every record now in ``topic`` (after ``wait_processed``: every output of what was sent before it)."""
    return asyncio.run(read_topic(bootstrap, topic, settings.kafka.topics.partitions))


def web_json(stack, path: str, timeout_s: float = 5.0) -> tuple[int, dict]:
    """(status, body) of a worker web view; (0, {}) while the worker does not answer."""
    url = stack.state.endpoints_obj().as_dict()["worker_web"] + path
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")
    except (OSError, ValueError):
        return 0, {}


def served_by(stack, server: str, kind: str | None = None) -> float:
    """Predictions the worker made with ``server`` (triton, local, baseline), of one kind or all."""
    from prometheus_client.parser import text_string_to_metric_families

    url = stack.state.endpoints_obj().as_dict()["worker_metrics"]
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == "popscore_predictions_total" and s.labels["served_by"] == server
               and (kind is None or s.labels["model"] == kind))


_TRITON_ERRORS: dict[int, float] = {}  # per stack: the worker's failed Triton calls when the last test started


def ensure_known_state(stack, timeout_s: float = 120.0) -> None:
    """What every test on a module's stack starts from: every component running and not paused, the worker
    ready, every model it serves on a closed circuit (Triton answering, not the local runtime). A test that
    stopped a component and failed before its own cleanup, or one that left the circuits open (Triton stopped
    under the worker: they stay open until a trial call succeeds), would otherwise hand the next test a stack
    that quietly scores with the local runtime or the fallback. Where Triton failed under the worker since the
    last check, the worker is restarted and a probe must be scored by Triton."""
    restarted = False
    if hasattr(stack, "status") and hasattr(stack, "start_component"):
        components = stack.status()["components"]
        for name in ("broker", "redis", "triton"):
            if name not in components:
                continue
            if not components[name]["alive"]:
                stack.start_component(name)
                restarted = True
            else:
                stack.resume_component(name)  # SIGCONT: nothing unless a test left it paused
        if "worker" in components and not components["worker"]["alive"]:
            stack.start_worker()
    deadline = time.monotonic() + timeout_s
    while True:
        status, body = web_json(stack, "/readyz")
        if status == 200 and body.get("ready"):
            break
        assert time.monotonic() < deadline, f"the worker is not ready: {body}"
        time.sleep(0.25)
    open_circuits = sorted(name for name, m in body["models"].items() if m["breaker"] != "closed")
    errors = sum(m.get("triton_errors", 0) for m in body["models"].values())
    failed_since = errors > _TRITON_ERRORS.get(id(stack), errors)  # (a restarted worker counts from 0)
    if restarted or open_circuits or failed_since:
        stack.restart_worker()  # circuits start closed on a Triton that is up again
        _probe_triton(stack, timeout_s)
        print(f"known state restored (components restarted: {restarted}, open circuits: {open_circuits}, Triton "
              f"failed since the last test: {failed_since}): worker restarted, a probe scored by Triton")
        errors = sum(m.get("triton_errors", 0) for m in web_json(stack, "/readyz")[1]["models"].values())
    _TRITON_ERRORS[id(stack)] = errors


def _probe_triton(stack, timeout_s: float) -> None:
    """One post and snapshot on Hacker News (a model set every stack serves); returns once its static and
    temporal predictions were made by Triton."""
    settings, endpoints = stack.settings, stack.state.endpoints_obj()
    before = {kind: served_by(stack, "triton", kind) for kind in ("static", "temporal")}
    post_id = f"probe-{time.monotonic_ns()}"
    now = datetime.now(timezone.utc).replace(microsecond=0)
    post = {"schema": "post.v1", "post_id": post_id, "platform": "hackernews",
            "created_at": iso(now - timedelta(minutes=30)), "text": {"title": "is Triton serving"}}
    snapshot = {"schema": "snapshot.v1", "post_id": post_id, "observed_at": iso(now - timedelta(minutes=1)),
                "counts": {"comments": 0}}
    asyncio.run(produce(endpoints.broker_bootstrap, settings.kafka.topics.posts,
                        [(post_id.encode(), json.dumps(post).encode())]))
    wait_processed(settings, endpoints.broker_bootstrap, timeout_s)  # the post first: no wait for it
    asyncio.run(produce(endpoints.broker_bootstrap, settings.kafka.topics.snapshots,
                        [(post_id.encode(), json.dumps(snapshot).encode())]))
    wait_processed(settings, endpoints.broker_bootstrap, timeout_s)
    after = {kind: served_by(stack, "triton", kind) for kind in ("static", "temporal")}
    assert all(after[kind] > before[kind] for kind in before), \
        f"the probe was not scored by Triton: {before} -> {after}, {web_json(stack, '/readyz')[1].get('models')}"
