"""The decode stage (stream/stages/decode.py): valid posts and snapshots pass, and every rejected record or
envelope element becomes a dead letter with its reason: undecodable, keyed by another post, or in an envelope of
another partition."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timezone

import orjson

from popscore.contract import Counts, Post, Snapshot, SnapshotBatch, encode_record
from popscore.settings import Settings
from popscore.stream.metrics import WorkerMetrics
from popscore.stream.stages.decode import Decode

AT = datetime(2026, 1, 1, tzinfo=timezone.utc)


@dataclass
class Message:
    value: bytes | None
    key: bytes | None
    partition: int = 0
    offset: int = 0
    topic: str = "snapshots"
    timestamp: float = 0.0


def snapshot(post_id: str) -> Snapshot:
    return Snapshot(post_id=post_id, observed_at=AT, counts=Counts(likes=1))


def decoder():
    letters = []

    async def send(topic, key, value):
        letters.append(orjson.loads(value))
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    async def partitioner(topic):
        return lambda key: 0 if key.startswith(b"even") else 1

    return Decode(Settings(), WorkerMetrics(), send, partitioner), letters


def reasons(letters: list[dict]) -> list[tuple[str, int | None]]:
    return [(letter["reason"], letter.get("index")) for letter in letters]


def test_snapshots_pass_and_rejected_ones_become_dead_letters():
    decode, letters = decoder()
    envelope = encode_record(SnapshotBatch(snapshots=[snapshot("even1"), snapshot("odd1"), snapshot("even2")]))
    messages = [Message(encode_record(snapshot("a")), b"a"), Message(encode_record(snapshot("a")), b"b"),
                Message(b"{not json", b"x"), Message(envelope, None, partition=0)]

    async def run():
        dead_letters, decoded = [], []
        for message in messages:
            decoded.append([s.post_id for s in await decode.snapshots(message, dead_letters)])
        await asyncio.gather(*dead_letters)
        return decoded, len(dead_letters)

    decoded, futures = asyncio.run(run())
    assert decoded == [["a"], [], [], ["even1", "even2"]]
    assert futures == len(letters) == 3
    # the envelope's element of partition 1 goes on its own, with its index
    assert reasons(letters) == [("key_mismatch", None), ("not_json", None), ("key_mismatch", 1)]


def test_posts_pass_and_one_keyed_by_another_post_is_a_dead_letter():
    decode, letters = decoder()
    post = encode_record(Post(post_id="p", platform="hackernews", created_at=AT))

    async def run():
        dead_letters = []
        posts = await decode.posts([Message(post, b"p", topic="posts"), Message(post, b"q", topic="posts")],
                                   dead_letters)
        await asyncio.gather(*dead_letters)
        return [p.post_id for p in posts]

    assert asyncio.run(run()) == ["p"]
    assert reasons(letters) == [("key_mismatch", None)]
