"""Merge: a step's snapshots, grouped by post -> the Redis sequences -> the updates of the posts to score.

The store merges idempotently (``sequence_store.py``) and returns of each sequence the tail the served models'
features read (and, for the counter-decrease count, from the record before the earliest one merged). A
redelivered snapshot changes nothing and is scored again only if its post's latest observation has no prediction
(one a crash lost). The posts and snapshots topics
are consumed independently, so a snapshot can overtake its post; scored without it (no age, platform or content)
it gives nonsense, so such a post waits, registered in Redis before its snapshots are acknowledged (a restart does
not forget it), for its post event (the post path scores it) or, after ``post_grace_s``, is scored without it
(the overdue timer).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from popscore.stream.failpoints import Failpoints
from popscore.stream.metrics import WorkerMetrics
from popscore.stream.redis_schema import APPENDED, CORRECTED, DUPLICATE, OUT_OF_ORDER
from popscore.stream.sequence_store import DEFAULT_LOOKBACK_S, SequenceUpdate, SnapshotSequenceStore, \
    count_decreases

MERGE_OUTCOMES = {APPENDED: "appended", DUPLICATE: "duplicate", CORRECTED: "corrected", OUT_OF_ORDER: "out_of_order"}


class Merge:
    def __init__(self, store: SnapshotSequenceStore, metrics: WorkerMetrics, failpoints: Failpoints,
                 post_grace_s: float, lookback_s: Callable[[str | None], float] = lambda _: DEFAULT_LOOKBACK_S
                 ) -> None:
        self.store = store
        self.metrics = metrics
        self.failpoints = failpoints
        self.post_grace_s = post_grace_s
        self.lookback_s = lookback_s  # platform -> how much of a sequence its model reads (ServedModels.lookback_s)

    async def step(self, by_post: dict[str, list[bytes]]) -> list[SequenceUpdate]:
        """The updates of the posts to score: whose sequence changed, or whose latest observation has no
        prediction (redelivered after a crash)."""
        started = time.perf_counter()
        updates = await self.store.merge_records(by_post, self.lookback_s)
        self.metrics.redis_seconds.labels("merge").observe(time.perf_counter() - started)
        self.metrics.snapshots_in.inc(sum(len(u.statuses) for u in updates))
        for status, n in Counter(status for update in updates for status in update.statuses).items():
            self.metrics.sequence_merges.labels(MERGE_OUTCOMES[status]).inc(n)
        from_cache = sum(u.post_from_cache for u in updates)
        self.metrics.post_metadata.labels("cache").inc(from_cache)
        self.metrics.post_metadata.labels("redis").inc(len(updates) - from_cache)
        changed = [u for u in updates if u.changed]
        if changed:
            self.metrics.counter_decreases.inc(count_decreases([u.sequence for u in changed],
                                                               [u.merged_at for u in changed]))
        to_score = [u for u in updates if u.needs_prediction]  # the changed ones and the redelivered unpredicted
        if len(to_score) > len(changed):
            self.metrics.rescored.inc(len(to_score) - len(changed))
        self.failpoints.hit("after_merge")
        return to_score

    async def with_post(self, updates: list[SequenceUpdate]) -> list[SequenceUpdate]:
        """The updates whose post has come; the others are registered as waiting for it."""
        waiting = [update.post_id for update in updates if update.post.created_at is None]
        if not waiting:
            return updates
        await self.store.await_posts(waiting, time.time() + self.post_grace_s)
        self.metrics.awaiting_post.inc(len(waiting))
        self.failpoints.hit("awaiting_post")
        return [u for u in updates if u.post.created_at is not None]
