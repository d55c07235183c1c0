"""The snapshot path's concurrency (stream/pipeline.py) with fake stages: the two-deep overlap of merge, features,
inference and publishing; outputs delivered before a window returns; a failure cancels what runs beside it and
nothing is published after it; lanes by partition keep a post's snapshots together and in order."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pytest

from popscore.contract import Counts, Snapshot
from popscore.stream.pipeline import SnapshotPipeline, StepStages
from popscore.stream.redis_schema import RECORD


class FakeStages:
    """Each stage logs (stage, step) when it starts and ends; a step is named by its first post. Merging and
    inference take a few loop turns (a Redis or Triton round trip), publishing hands back a delivery that
    completes later."""

    def __init__(self, fail_at: tuple[str, str] | None = None, round_trip: int = 3) -> None:
        self.log: list[tuple[str, str, str]] = []
        self.fail_at = fail_at
        self.round_trip = round_trip
        self.merged: list[dict[str, list[bytes]]] = []
        self.delivered: list[str] = []

    def stages(self) -> StepStages:
        return StepStages(self.merge, self.features, self.infer, self.publish)

    async def _stage(self, stage: str, step: str, turns: int) -> None:
        self.log.append(("start", stage, step))
        for _ in range(turns):
            await asyncio.sleep(0)
        if self.fail_at == (stage, step):
            raise RuntimeError(f"{stage} of {step} failed")
        self.log.append(("end", stage, step))

    async def merge(self, by_post):
        step = next(iter(by_post))
        self.merged.append(by_post)
        await self._stage("merge", step, self.round_trip)
        return step

    async def features(self, step):
        await self._stage("features", step, 1)
        return [step]

    async def infer(self, jobs):
        await self._stage("infer", jobs[0], self.round_trip)
        return jobs[0]

    async def publish(self, jobs, step):
        await self._stage("publish", step, 1)

        async def deliver():
            await asyncio.sleep(0.01)
            self.delivered.append(step)
        return [asyncio.ensure_future(deliver())]

    def at(self, event: str, stage: str, step: str) -> int:
        return self.log.index((event, stage, step))


def pipeline(fake: FakeStages, lanes: int = 1, window: int = 10_000, lane_min: int = 0, step: int = 1
             ) -> SnapshotPipeline:
    return SnapshotPipeline(fake.stages(), lanes=lanes, window_snapshots=window, lane_min_snapshots=lane_min,
                            step_snapshots=step)


def steps(n: int) -> list[dict[str, list[bytes]]]:
    return [{f"s{k}": [b""]} for k in range(n)]


def test_steps_overlap_two_deep():
    fake = FakeStages()
    asyncio.run(pipeline(fake).run_steps(steps(4)))
    for k in range(1, 4):
        previous, this = f"s{k - 1}", f"s{k}"
        # step k is merged in Redis while step k-1's features are built and step k-2 is published
        assert fake.at("start", "merge", this) < fake.at("end", "features", previous)
        if k > 1:
            assert fake.at("start", "merge", this) < fake.at("end", "publish", f"s{k - 2}")
        # Triton is given step k before step k-1 is published, and scores it meanwhile
        assert fake.at("start", "infer", this) < fake.at("end", "publish", previous)
        assert fake.at("start", "publish", previous) < fake.at("end", "infer", this)
        # one merge ahead at most: step k+1's merge starts after step k's is done
        if k + 1 < 4:
            assert fake.at("end", "merge", this) < fake.at("start", "merge", f"s{k + 1}")
    assert [s for e, stage, s in fake.log if (e, stage) == ("end", "publish")] == ["s0", "s1", "s2", "s3"]


def test_a_window_returns_only_once_its_outputs_are_delivered():
    fake = FakeStages()
    asyncio.run(pipeline(fake).run_steps(steps(3)))
    assert fake.delivered == ["s0", "s1", "s2"]


@pytest.mark.parametrize("failing", [("features", "s2"), ("infer", "s1"), ("merge", "s2")])
def test_a_failing_step_cancels_the_others_and_nothing_is_published_after(failing):
    fake = FakeStages(fail_at=failing)

    async def run():
        with pytest.raises(RuntimeError, match="failed"):
            await pipeline(fake).run_steps(steps(5))
        failed_at = len(fake.log)
        await asyncio.sleep(0.05)  # anything left running would log (or deliver) by now
        return failed_at

    failed_at = asyncio.run(run())
    assert len(fake.log) == failed_at, f"stages ran after the failure: {fake.log[failed_at:]}"
    published = [s for e, stage, s in fake.log if (e, stage) == ("end", "publish")]
    assert all(int(s[1:]) < int(failing[1][1:]) for s in published)
    assert "s4" not in {s for _, _, s in fake.log}


def snapshot(post_id: str, minute: int) -> Snapshot:
    return Snapshot(post_id=post_id, observed_at=datetime(2026, 1, 1, 0, minute, tzinfo=timezone.utc),
                    counts=Counts(likes=minute))


def minutes(records: list[bytes]) -> list[int]:
    return [RECORD.unpack(r)[0] // 60 % 60 for r in records]


def test_a_posts_snapshots_stay_in_one_lane_in_order():
    fake = FakeStages(round_trip=1)
    # partitions 0 and 2 share lane 0 of 2; a's and c's snapshots come in several records
    records = [(0, [snapshot("a", 1), snapshot("b", 1)]), (1, [snapshot("c", 1)]), (2, [snapshot("d", 1)]),
               (0, [snapshot("a", 2)]), (1, [snapshot("c", 3), snapshot("c", 2)]), (0, [snapshot("a", 3)])]

    async def run():
        windows = pipeline(fake, lanes=2, step=100).batch()
        for partition, snapshots in records:
            assert not windows.add(partition, snapshots)
        await windows.score(last=True)

    asyncio.run(run())
    assert sorted(sorted(by_post) for by_post in fake.merged) == [["a", "b", "d"], ["c"]]
    merged = {post: records for by_post in fake.merged for post, records in by_post.items()}
    assert minutes(merged["a"]) == [1, 2, 3] and minutes(merged["c"]) == [1, 3, 2]  # arrival order, folded


def test_a_small_batch_is_one_lane_and_full_windows_are_scored_before_more_is_read():
    fake = FakeStages(round_trip=1)

    async def run():
        small = pipeline(fake, lanes=2, lane_min=10, step=100).batch()
        small.add(0, [snapshot("a", 1)])
        small.add(1, [snapshot("b", 1)])
        await small.score(last=True)
        assert [sorted(by_post) for by_post in fake.merged] == [["a", "b"]]
        fake.merged.clear()
        windows = pipeline(fake, lanes=2, window=3, step=100).batch()
        assert not windows.add(0, [snapshot("a", 1), snapshot("a", 2)])
        assert windows.add(1, [snapshot("b", 1)])
        await windows.score()
        assert sorted(sorted(by_post) for by_post in fake.merged) == [["a"], ["b"]]
        assert not windows.add(0, [snapshot("a", 3)])  # the next windows start empty
        await windows.score(last=True)
        assert minutes(fake.merged[-1]["a"]) == [3]

    asyncio.run(run())


def test_a_failing_lane_cancels_the_other_lanes():
    fake = FakeStages(fail_at=("merge", "a"), round_trip=2)
    slow = FakeStages(round_trip=50)
    failing = pipeline(fake)

    async def merge(by_post):
        return await (fake.merge if "a" in by_post else slow.merge)(by_post)

    failing.stages = StepStages(merge, fake.features, fake.infer, fake.publish)

    async def run():
        with pytest.raises(ExceptionGroup):
            await failing.score_lanes([({"a": [b""]}, 1), ({"b": [b""]}, 1)])

    asyncio.run(run())
    assert ("start", "merge", "b") in slow.log and ("end", "merge", "b") not in slow.log
