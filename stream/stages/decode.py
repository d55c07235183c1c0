"""Decode: Kafka records -> valid posts and snapshots; every rejected record -> the dead-letter topic.

Values arrive as raw bytes and are validated here, at the boundary, so that a record Faust could not even decode
still reaches the dead-letter topic with its original bytes (a snapshot of an envelope on its own, with its
index). A post and its snapshots are keyed by post_id: that keeps them in one partition, in order, on one worker
(and in one lane, ``stream/pipeline.py``).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from popscore.contract import DeadLetter, Post, RejectedRecord, RejectReason, Snapshot, decode_record, \
    decode_snapshots, encode_record
from popscore.settings import Settings
from popscore.stream.metrics import WorkerMetrics


def check_key(key: bytes | None, post_id: str) -> None:
    if key is None:
        raise RejectedRecord(RejectReason.KEY_MISMATCH, f"record has no key; it must be keyed by post_id {post_id!r}")
    if key != post_id.encode():
        raise RejectedRecord(RejectReason.KEY_MISMATCH, f"record key {key[:200]!r} differs from post_id {post_id!r}")


class Decode:
    def __init__(self, settings: Settings, metrics: WorkerMetrics, send, partitioner=None) -> None:
        self.limits = settings.limits
        self.max_future_skew = timedelta(seconds=settings.limits.max_future_skew_s)
        self.deadletter_topic = settings.kafka.topics.deadletter
        self.metrics = metrics
        self.send = send  # async (topic, key, value) -> delivery future
        # async (topic) -> (key -> the partition a keyed send puts it in): checks envelopes' snapshots
        self.partitioner = partitioner

    async def posts(self, messages: list, dead_letters: list) -> list[Post]:
        """The valid posts of ``messages``; the delivery future of each rejected one's dead letter is appended to
        ``dead_letters``."""
        posts = []
        for message in messages:
            try:
                posts.append(self.post(message))
            except RejectedRecord as error:
                dead_letters.append(await self.dead_letter(message, error))
        return posts

    def post(self, message) -> Post:
        self.metrics.records_in.labels(message.topic).inc()
        post = decode_record(message.value or b"", accept=("post.v1",), max_bytes=self.limits.max_record_bytes,
                             max_future_skew=self.max_future_skew)
        check_key(message.key, post.post_id)
        return post

    async def snapshots(self, message, dead_letters: list) -> list[Snapshot]:
        """The valid snapshots of a snapshot record or envelope; the delivery future of each rejected one's dead
        letter is appended to ``dead_letters``. A single snapshot must be keyed by its post_id; an envelope's
        snapshots must belong to the envelope's partition (the one a keyed send of their post_id picks), or their
        post's snapshots would be split between workers."""
        self.metrics.records_in.labels(message.topic).inc()
        try:
            decoded = decode_snapshots(message.value or b"", max_bytes=self.limits.max_record_bytes,
                                       max_future_skew=self.max_future_skew)
            snapshots, rejected = decoded.snapshots, [(r.index, r.value, r.error) for r in decoded.rejected]
            if not decoded.envelope:
                check_key(message.key, snapshots[0].post_id)
        except RejectedRecord as error:
            dead_letters.append(await self.dead_letter(message, error))
            return []
        if decoded.envelope and self.partitioner is not None:
            partition_of, kept = await self.partitioner(message.topic), []
            for index, snapshot in zip(decoded.indices, snapshots):
                partition = partition_of(snapshot.post_id.encode())
                if partition == message.partition:
                    kept.append(snapshot)
                else:
                    rejected.append((index, encode_record(snapshot), RejectedRecord(
                        RejectReason.KEY_MISMATCH, f"post_id {snapshot.post_id!r} belongs to partition {partition}, "
                        f"the envelope is in partition {message.partition}")))
            snapshots = kept
        for index, value, error in rejected:
            dead_letters.append(await self.dead_letter(message, error, index, value))
        return snapshots

    async def dead_letter(self, message, error: RejectedRecord, index: int | None = None, value: bytes | None = None):
        """The delivery future of a dead letter for ``message`` (or, with ``index``, one snapshot of it)."""
        letter = DeadLetter.of(topic=message.topic, partition=message.partition, offset=message.offset,
                               key=message.key, value=(message.value or b"") if value is None else value, error=error,
                               index=index, max_original_bytes=self.limits.deadletter_original_bytes)
        self.metrics.dead_letters.labels(message.topic, error.reason.value).inc()
        self.metrics.records_out.labels(self.deadletter_topic).inc()
        return await self.send(self.deadletter_topic, message.key, encode_record(letter))

    async def dead_letter_failure(self, message, exc: BaseException) -> None:
        """A record that fails processing on its own (batch_runner.py), with the exception."""
        error = RejectedRecord(RejectReason.PROCESSING_FAILED, f"{type(exc).__name__}: {exc}")
        await asyncio.gather(await self.dead_letter(message, error))
