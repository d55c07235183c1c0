"""Re-scores racing a newer snapshot, driven in a fixed order through the worker's own code paths against the real
Redis and Triton of the embedded stack (no sleeps: the order is forced, not hoped for).

A re-score reads a post's stored sequence (``SnapshotSequenceStore.current``) and scores it; if a snapshot of a
later observation is merged, scored and recorded between that read and the re-score's own record, the re-score's
prediction (as of the earlier observation) must not become the post's latest: not in the post hash
(``prediction:temporal``, ``predicted_to``), not on the boards. It is still published, with its ``as_of``, so the
topic's consumers can tell it is older (record_predictions.lua's header). The paths that re-score this way:

- a media retry (``StreamWorker.retry_media``): the picture read again, the stored sequence scored with it;
- a post that comes after its snapshots (``StreamWorker.handle_posts``): the waiting sequence scored with it.

(The overdue timer, ``score_overdue``, re-scores posts whose post never came: a newer snapshot of such a post is
not scored by the snapshot path, it waits too, so it cannot record a later prediction in between.)

The worker here is a ``StreamWorker`` in the test process, on the session stack's services but a Redis key prefix
of its own (the stack's worker never touches its keys), fed records directly and publishing into a list.
"""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import uuid
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
import redis

from popscore.stream.redis_schema import PREDICTED_TO, TOP_BOARD, RedisKeys, latest_predictions
from popscore.stream.worker import StreamWorker
from tests.integration.test_media import picture

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def worker_settings(stack_settings, endpoints, tmp_path):
    """The stack's settings pointed at its services as the stack points its workers (``worker_settings_env``),
    with keys of this test's own and a picture root."""
    settings = stack_settings.model_copy(deep=True)
    settings.kafka.bootstrap_servers = endpoints.broker_bootstrap
    settings.redis.url, settings.redis.mode = endpoints.redis_url, endpoints.redis_mode
    settings.triton.http_url = f"{endpoints.host}:{endpoints.triton_http_port}"
    settings.triton.grpc_url = f"{endpoints.host}:{endpoints.triton_grpc_port}"
    settings.serving.python_backend_mirror = settings.stack.run_dir.resolve() / "triton_repository"
    settings.redis.key_prefix = f"race-{uuid.uuid4().hex[:8]}:"
    settings.worker.metrics_port = free_port()
    settings.media.roots = [str(tmp_path)]
    return settings


class Sent:
    """``send_many`` into a list: every record delivered at once."""

    def __init__(self) -> None:
        self.records: list[dict] = []

    async def send_many(self, topic: str, records: list[tuple[bytes, bytes]]) -> list:
        done = []
        for _, value in records:
            self.records.append(json.loads(value))
            future = asyncio.get_running_loop().create_future()
            future.set_result(None)
            done.append(future)
        return done

    async def send(self, topic: str, key: bytes, value: bytes):
        raise AssertionError(f"nothing here is dead-lettered: {value[:200]!r}")

    def temporal(self, post_id: str) -> list[dict]:
        return [r for r in self.records if r["post_id"] == post_id and r["model"] == "temporal"]


def iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def message(topic: str, partition: int, post_id: str, record: dict) -> SimpleNamespace:
    return SimpleNamespace(topic=topic, partition=partition, offset=0, key=post_id.encode(),
                           value=json.dumps(record).encode(), timestamp=None)


@pytest.mark.parametrize("path", ["media_retry", "post_after_snapshots"])
def test_a_rescore_racing_a_newer_snapshot_is_published_but_not_recorded_as_the_latest(worker_settings, tmp_path,
                                                                                     path):
    settings, sent = worker_settings, Sent()
    topics, keys = settings.kafka.topics, RedisKeys.of(settings)
    post_id = f"race-{path}-{uuid.uuid4().hex[:6]}"
    shard = keys.shard(post_id)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    earlier, later = now - timedelta(minutes=50), now - timedelta(minutes=20)
    created = now - timedelta(hours=1)
    post_record = {"schema": "post.v1", "post_id": post_id, "platform": "reddit", "created_at": iso(created),
                   "text": {"title": f"the post {post_id}"},
                   "media": {"image_uris": [f"file://{tmp_path}/picture.jpg"]}}  # not there yet: missing

    def snapshot(at: datetime, likes: int) -> SimpleNamespace:
        return message(topics.snapshots, shard, post_id, {"schema": "snapshot.v1", "post_id": post_id,
                                                          "observed_at": iso(at), "counts": {"likes": likes}})

    async def scenario():
        worker = StreamWorker(settings, sent.send, sent.send_many)
        await worker.start_when_possible()
        try:
            if path == "media_retry":  # the post scored without its picture, its sequence as of `earlier`
                await worker.handle_posts([message(topics.posts, shard, post_id, post_record)])
                await worker.handle_snapshots([snapshot(earlier, 40)])
                (tmp_path / "picture.jpg").write_bytes(picture(401, fmt="JPEG"))  # the store is back
                await worker.media_retries.schedule([worker.decode.post(message(topics.posts, shard, post_id,
                                                                               post_record))], 0.0)  # due
                rescore = lambda: worker.retry_media([shard])  # noqa: E731
            else:  # the snapshot came first and waits; then its post comes
                await worker.handle_snapshots([snapshot(earlier, 40)])
                rescore = lambda: worker.handle_posts([message(topics.posts, shard, post_id, post_record)])  # noqa
            before = len(sent.temporal(post_id))

            # The re-score reads the sequence (as of `earlier`); before it scores it, a later snapshot of the post
            # is merged, scored and recorded by the snapshot path.
            read = worker.store.current
            raced = []

            async def read_then_newer_snapshot(post_ids):
                updates = await read(post_ids)
                if post_id in post_ids and not raced:
                    raced.append(await worker.handle_snapshots([snapshot(later, 90)]))
                return updates

            worker.store.current = read_then_newer_snapshot
            await rescore()
            assert raced, "the newer snapshot went in between"
            client = redis.Redis.from_url(settings.redis.url)
            try:
                fields = client.hgetall(keys.post(post_id))
                board = client.zrevrange(keys.board(TOP_BOARD, shard), 0, -1, withscores=True)
            finally:
                client.close()
            return sent.temporal(post_id)[before:], fields, board, \
                worker.metrics.predictions_not_latest._value.get()
        finally:
            await worker.stop()
            gc.unfreeze()  # what the worker's start did to this process's collector
            gc.set_threshold(700, 10, 10)

    temporal, fields, board, not_latest = asyncio.run(scenario())
    # Published: the newer snapshot's prediction, then the re-score's, as of the earlier observation.
    assert [r["as_of"] for r in temporal] == [iso(later), iso(earlier)], temporal
    newer, rescored = temporal
    if path == "media_retry":
        assert rescored["explanation"]["media_retry"] == 1, rescored
        # The newer snapshot's merge read the content vector the retry wrote: it already has the picture.
        assert newer["explanation"]["modality_weights"]["visual"] > 0, newer
    # Recorded: the newer one stays the post's latest, in its hash and on the board.
    latest = latest_predictions(fields)["temporal"]
    assert (latest["as_of"], latest["score"]) == (iso(later), newer["score"]), latest
    assert fields[PREDICTED_TO.encode()] == str(int(later.timestamp())).encode()
    assert board == [(post_id.encode(), pytest.approx(newer["score"]))], board
    assert not_latest == 1
