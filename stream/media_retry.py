"""Pictures read again after an object-store outage.

A post whose picture was ``unavailable`` (the store timed out, failed, throttled or refused the worker: a fault of
the store, not of the post) is scored at once without the visual modality, flagged ``media_rejected``, as any post
with a bad picture. Unlike the other reasons, this one may pass, so the post is also scheduled here: its picture is
read again ``media.retry_after_s`` later, then after waits ``media.retry_backoff`` times longer, up to
``media.retry_attempts`` times. When a read succeeds the worker recomputes the post's static prediction and content
vector (the visual modality feeds both) and its temporal prediction of the stored sequence, and publishes them
again, marked ``explanation.media_retry`` (the retry that read it): the same post, kind and ``as_of`` as the
predictions they replace, produced later, as the without_post re-score replaces its predictions; except that a
temporal prediction older than one recorded meanwhile (a newer snapshot scored while the retry ran) is published
but not recorded as the post's latest (record_predictions.lua). A read that is unavailable again waits for the
next retry; after the last the post keeps its predictions without the picture (counted as given up); a read that
now meets a permanent problem (missing, undecodable...) ends the retries.

The schedule lives in Redis (``redis_schema``: ``media_retry`` and ``media_retry_posts`` per shard, written only
here), before the post's batch is acknowledged, so a worker restart loses none. A worker retries only the posts of
the partitions it holds (their shards): it writes the post's content vector, and the worker holding the partition
caches that vector for its merges (``PostMetaCache``), so the write must be that worker's own. Due posts are
leased (``media.retry_lease_s``) as the awaiting posts are: a worker that dies mid-retry leaves them to be taken
again, and the at-least-once outputs of a retry may then be published twice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from popscore.contract import Post
from popscore.media import UNAVAILABLE
from popscore.settings import MediaSettings
from popscore.stream.redis_client import AsyncClient
from popscore.stream.redis_schema import CLAIM_MEDIA_RETRIES, RedisKeys, claim_media_retries_call, decode_retry, \
    encode_retry, lua_source
from popscore.stream.redis_script import PipelinedScript

log = logging.getLogger(__name__)

RECOVERED, UNAVAILABLE_AGAIN, GIVEN_UP, REJECTED = "recovered", "unavailable", "given_up", "rejected"
OUTCOMES = (RECOVERED, UNAVAILABLE_AGAIN, GIVEN_UP, REJECTED)
"""What a retry of a post's picture came to: read (the post scored again with it); unavailable again, another
retry scheduled; unavailable at the last retry, the post stays without; a permanent problem now (the store
answered: missing, undecodable, oversized, disallowed, or the platform has no model set any more), no more
retries."""


@dataclass(frozen=True)
class RetryPolicy:
    """When a post's picture is read again: ``attempts`` retries, the first ``after_s`` after the failed read,
    each later one ``backoff`` times further from the one before."""

    attempts: int
    after_s: float
    backoff: float

    @classmethod
    def of(cls, media: MediaSettings) -> "RetryPolicy":
        return cls(media.retry_attempts, media.retry_after_s, media.retry_backoff)

    def wait_s(self, retry: int) -> float:
        """Seconds from the read before it to retry number ``retry`` (1-based)."""
        return self.after_s * self.backoff ** (retry - 1)

    def first_due(self, now: float) -> float | None:
        """When the first retry of a picture unavailable at ``now`` is due; None when retries are off."""
        return now + self.wait_s(1) if self.attempts > 0 else None

    def outcome(self, problem: str | None, retries: int) -> str:
        """What retry number ``retries`` (1-based) came to, from the media problem it met (None: read)."""
        if problem is None:
            return RECOVERED
        if problem != UNAVAILABLE:
            return REJECTED
        return UNAVAILABLE_AGAIN if retries < self.attempts else GIVEN_UP

    def next_due(self, retries: int, now: float) -> float:
        """When the retry after retry number ``retries``, unavailable again at ``now``, is due."""
        return now + self.wait_s(retries + 1)


@dataclass(frozen=True)
class DueRetry:
    post_id: str
    retries: int  # made before this one
    post: Post


class MediaRetries:
    """The retry schedule in Redis: the one writer of the ``media_retry`` and ``media_retry_posts`` keys."""

    def __init__(self, client: AsyncClient, keys: RedisKeys, policy: RetryPolicy) -> None:
        self.client = client
        self.keys = keys
        self.policy = policy
        self._claim = PipelinedScript(client, lua_source(CLAIM_MEDIA_RETRIES))

    async def schedule(self, posts: list[Post], now: float) -> int:
        """Schedule the first retry of these posts' pictures (unavailable at ``now``); a post already scheduled (a
        redelivered post event) keeps its schedule and its retries. The number scheduled (0 with retries off)."""
        due = self.policy.first_due(now)
        if due is None or not posts:
            return 0
        by_id = {post.post_id: post for post in posts}
        async with self.client.pipeline(transaction=False) as pipe:
            for shard, group in self.keys.by_shard(by_id).items():
                for post_id in group:  # the record first: a member without one is dropped by the claim
                    pipe.hsetnx(self.keys.media_retry_posts(shard), post_id, encode_retry(0, by_id[post_id]))
                pipe.zadd(self.keys.media_retry(shard), {post_id: due for post_id in group}, nx=True)
            await pipe.execute()
        return len(by_id)

    async def claim(self, shards: Iterable[int], now: float, lease_s: float, limit: int) -> list[DueRetry]:
        """The posts of ``shards`` due by ``now``, leased for ``lease_s``: up to ``limit`` of each shard. A record
        that cannot be read back is dropped (logged)."""
        shards = list(shards)
        if not shards:
            return []

        def queue_calls(pipe) -> None:
            for shard in shards:
                self._claim.call(pipe, *claim_media_retries_call(self.keys, shard, now, now + lease_s, limit))

        taken, broken = [], []
        for pairs in await self._claim.run(queue_calls):
            for member, record in zip(pairs[0::2], pairs[1::2]):
                post_id = member.decode()
                try:
                    retries, post = decode_retry(record)
                except Exception as exc:  # noqa: BLE001  a record of another format: dropped, not retried forever
                    log.warning("media retry of %s dropped: its record cannot be read (%r)", post_id, exc)
                    broken.append(post_id)
                    continue
                taken.append(DueRetry(post_id, retries, post))
        await self.done(broken)
        return taken

    async def reschedule(self, retries: list[tuple[DueRetry, float]]) -> None:
        """Record one more retry made of each post and when the next is due."""
        if not retries:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for item, due in retries:
                shard = self.keys.shard(item.post_id)
                pipe.hset(self.keys.media_retry_posts(shard), item.post_id, encode_retry(item.retries + 1, item.post))
                pipe.zadd(self.keys.media_retry(shard), {item.post_id: due})
            await pipe.execute()

    async def done(self, post_ids: list[str]) -> None:
        """No more retries of these posts' pictures."""
        if not post_ids:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for shard, group in self.keys.by_shard(post_ids).items():
                pipe.zrem(self.keys.media_retry(shard), *group)
                pipe.hdel(self.keys.media_retry_posts(shard), *group)
            await pipe.execute()

    async def pending(self) -> int:
        """Posts scheduled for a retry, in every shard."""
        async with self.client.pipeline(transaction=False) as pipe:
            for shard in self.keys.all_shards:
                pipe.zcard(self.keys.media_retry(shard))
            return sum(await pipe.execute())
