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
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import redis

from popscore.stream.redis_schema import RedisKeys, decode_sequence, platform_board, prediction_field
from popscore.tools.replay import batch_envelope
from tests.integration.kafka_io import consume_until, partition_of, produce, produce_to_partitions


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


def send_posts(stack, traffic: Traffic, timeout_s: float = 60.0) -> None:
    """Produce the posts and wait until each has its static prediction (so a fault injected next hits the
    snapshots' path)."""
    endpoints = stack.state.endpoints_obj()
    asyncio.run(produce(endpoints.broker_bootstrap, stack.settings.kafka.topics.posts, traffic.posts))
    client = redis.Redis.from_url(endpoints.redis_url)
    keys = list(map(RedisKeys(stack.settings.redis.key_prefix).post, traffic.post_ids))
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
    keys = RedisKeys(settings.redis.key_prefix)
    client = redis.Redis.from_url(endpoints.redis_url)
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
        return {m.decode() for m in client.zrange(keys.board(platform_board(platform)), 0, -1)}

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
