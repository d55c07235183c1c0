"""Replay a slice of real events to the embedded broker and consume back exactly the same events, in order
per key, once as single records and once as per-partition snapshot batches."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import defaultdict
from pathlib import Path

import pytest

from popscore import eventfile
from popscore.settings import TopicSettings
from popscore.tools.replay import ReplayOptions, partition_for, replay_file

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def broker_bootstrap(tmp_path_factory):
    """A broker of its own (Tansu, started by the stack's own helpers), not the whole embedded stack:
    replay needs only Kafka, and its own broker keeps the worker's consumers off these records."""
    from popscore.tools.stack import components as c
    from popscore.tools.stack.process import ManagedProcess, free_port

    endpoints = c.Endpoints("127.0.0.1", free_port(), 0, 0, 0, 0, 0, 0)
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    broker = ManagedProcess.spawn("broker", c.broker_argv(endpoints), log)
    try:
        deadline = time.monotonic() + 30
        while not c.broker_healthy(endpoints):
            if time.monotonic() > deadline or not broker.alive():
                pytest.fail(f"broker did not start: {broker.log_tail()}")
            time.sleep(0.2)
        yield endpoints.broker_bootstrap
    finally:
        broker.stop(10)


@pytest.fixture(scope="module")
def slice_file(tmp_path_factory) -> Path:
    """The first 40 Reddit posts when the real data is here, else the built-in simulated sample."""
    from tests.conftest import SHARED_DATA

    path = tmp_path_factory.mktemp("replay") / "slice.jsonl"
    if SHARED_DATA.is_dir():
        from popscore.datasets import load

        eventfile.write(path, load("reddit", SHARED_DATA, limit=40).events())
    else:
        path.write_bytes((REPO / "tools" / "sample" / "demo.jsonl").read_bytes())
    return path


def fresh_topics() -> TopicSettings:
    run = uuid.uuid4().hex[:8]
    return TopicSettings(posts=f"replay-posts-{run}", snapshots=f"replay-snapshots-{run}", partitions=4)


async def consume(bootstrap: str, topics: list[str]) -> list:
    """Every record of ``topics``, read to their end offsets: the replay has returned, so a duplicate it sent is
    there to be counted, with no quiet period to wait out."""
    from tests.integration.kafka_io import read_topic

    return [record for topic in topics for record in await read_topic(bootstrap, topic, partitions=4)]


def per_key(lines: list[bytes]) -> dict[str, list[bytes]]:
    grouped: dict[str, list[bytes]] = defaultdict(list)
    for line in lines:
        grouped[json.loads(line)["post_id"]].append(line)
    return dict(grouped)


def file_lines(path: Path) -> tuple[list[bytes], list[bytes]]:
    posts, snapshots = [], []
    for raw, event in eventfile.read_lines(path):
        (posts if json.loads(raw)["schema"] == "post.v1" else snapshots).append(raw)
    return posts, snapshots


def in_offset_order(records, topic: str) -> list:
    return sorted((r for r in records if r.topic == topic), key=lambda r: (r.partition, r.offset))


def test_replay_single_records_round_trip(broker_bootstrap, slice_file):
    topics = fresh_topics()
    result = replay_file(slice_file, broker_bootstrap, topics, ReplayOptions(progress=False))
    posts, snapshots = file_lines(slice_file)
    assert result.complete and result.events_read == len(posts) + len(snapshots)
    assert (result.posts_acked, result.snapshots_acked) == (len(posts), len(snapshots))

    records = asyncio.run(consume(broker_bootstrap, [topics.posts, topics.snapshots]))
    assert len(records) == result.events_read  # nothing lost, nothing duplicated
    for topic, sent in ((topics.posts, posts), (topics.snapshots, snapshots)):
        got = in_offset_order(records, topic)
        for record in got:
            post_id = json.loads(record.value)["post_id"]
            assert record.key == post_id.encode()
            assert record.partition == partition_for(post_id, [0, 1, 2, 3])
        assert per_key([r.value for r in got]) == per_key(sent)  # same bytes, same order per key


def test_replay_batches_round_trip(broker_bootstrap, slice_file):
    topics = fresh_topics()
    result = replay_file(slice_file, broker_bootstrap, topics, ReplayOptions(batch=True, batch_max=25, progress=False))
    posts, snapshots = file_lines(slice_file)
    assert result.complete and result.snapshots_acked == len(snapshots)
    assert result.snapshot_records < len(snapshots)

    expected_records = result.post_records + result.snapshot_records
    records = asyncio.run(consume(broker_bootstrap, [topics.posts, topics.snapshots]))
    assert len(records) == expected_records
    unpacked: list[bytes] = []
    for record in in_offset_order(records, topics.snapshots):
        envelope = json.loads(record.value)
        assert envelope["schema"] == "snapshot-batch.v1" and 1 <= len(envelope["snapshots"]) <= 25
        for snapshot in envelope["snapshots"]:
            assert partition_for(snapshot["post_id"], [0, 1, 2, 3]) == record.partition
            unpacked.append(json.dumps(snapshot, separators=(",", ":")).encode())
    assert per_key(unpacked) == per_key([json.dumps(json.loads(s), separators=(",", ":")).encode() for s in snapshots])
    assert per_key([r.value for r in in_offset_order(records, topics.posts)]) == per_key(posts)


def test_replay_rate_paces(broker_bootstrap, tmp_path, slice_file):
    lines = slice_file.read_text().splitlines()[:40]
    path = tmp_path / "short.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = replay_file(path, broker_bootstrap, fresh_topics(), ReplayOptions(rate=100.0, progress=False))
    assert result.complete and result.events_read == 40
    assert result.elapsed_s >= 39 / 100.0
