"""The snapshot path's concurrency, apart from what its stages do (``stream/stages/``).

A micro-batch is cut three ways (docs/architecture.md draws it):
- lanes: records are split by partition into ``lanes``. A post's snapshots are all in one partition, so a post
  stays in one lane, in order, and the lanes are scored concurrently: one works while another waits on Redis or
  Triton. A micro-batch of fewer than ``lane_min_snapshots`` is scored in one lane, as lanes only add round
  trips to small batches.
- windows: a lane's snapshots grouped by post, so that several snapshots of a post give one merge and one
  prediction (after a lag, catching up costs per post, not per snapshot). The windows of all lanes hold about
  ``window_snapshots`` at most, which bounds what a batch of envelopes holds: full windows are scored before
  more records are read.
- steps: a window is merged, scored and published in steps of about ``step_snapshots``, a post's snapshots in
  one step, so steps touch disjoint posts and their writes may overlap. Steps run two deep: step k+1 is merged
  in Redis while this process builds step k's features and publishes step k-1, and Triton scores step k
  meanwhile.
A window returns only once its outputs are delivered, so a later window's prediction of a post is written after
this one's, and a batch is acknowledged only after its outputs are produced (at-least-once). A failing step
cancels what runs beside it, and a failing lane the other lanes, so nothing is published after a failure.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from popscore.contract import Snapshot
from popscore.stream.sequence_store import group_by_post, steps_by_post

Updates = TypeVar("Updates")
Jobs = TypeVar("Jobs")
Outputs = TypeVar("Outputs")
ByPost = dict[str, list[bytes]]  # a post's encoded snapshots, in arrival order


@dataclass(frozen=True)
class StepStages(Generic[Updates, Jobs, Outputs]):
    """What a step goes through; the pipeline only decides when each runs."""

    merge: Callable[[ByPost], Awaitable[Updates]]  # a step's snapshots -> the updates to score
    features: Callable[[Updates], Awaitable[Jobs]]  # -> jobs; empty: nothing to score
    infer: Callable[[Jobs], Awaitable[Outputs]]
    publish: Callable[[Jobs, Outputs], Awaitable[list[Awaitable[Any]]]]  # -> outputs still being delivered


class SnapshotPipeline:
    def __init__(self, stages: StepStages, *, lanes: int, window_snapshots: int, lane_min_snapshots: int,
                 step_snapshots: int, folded: Callable[[int], Any] = lambda n: None) -> None:
        self.stages = stages
        self.lanes = lanes
        self.window_snapshots = window_snapshots
        self.lane_min_snapshots = lane_min_snapshots
        self.step_snapshots = step_snapshots
        self.folded = folded  # told how many snapshots a window folded into an earlier one of their post

    def batch(self) -> Windows:
        return Windows(self)

    async def score_lanes(self, windows: list[tuple[ByPost, int]]) -> None:
        async with asyncio.TaskGroup() as lanes:  # a lane that fails cancels the others
            for window, snapshots in windows:
                lanes.create_task(self.score_window(window, snapshots))

    async def score_window(self, window: ByPost, snapshots: int) -> None:
        self.folded(snapshots - len(window))
        await self.run_steps(steps_by_post(window, self.step_snapshots))

    async def run_steps(self, steps: list[ByPost]) -> None:
        merge, features, infer, publish = self.stages.merge, self.stages.features, self.stages.infer, \
            self.stages.publish
        outputs = []
        merging = asyncio.ensure_future(merge(steps[0])) if steps else None
        scoring: tuple[Any, asyncio.Future] | None = None  # the step Triton is scoring: its jobs, their inference
        current = None
        try:
            for k in range(len(steps)):
                merged = await merging
                merging = asyncio.ensure_future(merge(steps[k + 1])) if k + 1 < len(steps) else None
                jobs = await features(merged)
                current = (jobs, asyncio.ensure_future(infer(jobs))) if jobs else None
                if scoring is not None:
                    outputs += await publish(scoring[0], await scoring[1])
                scoring = current
            if scoring is not None:
                outputs += await publish(scoring[0], await scoring[1])
                scoring = None
            await asyncio.gather(*outputs)
        finally:  # if a step failed, nothing is left running behind it (a no-op on finished ones)
            for pending in (merging, scoring and scoring[1], current and current[1]):
                if pending is not None:
                    pending.cancel()


class Windows:
    """One micro-batch's windows, one per lane, filled record by record."""

    def __init__(self, pipeline: SnapshotPipeline) -> None:
        self.pipeline = pipeline
        self._reset()

    def _reset(self) -> None:
        lanes = self.pipeline.lanes
        self.by_lane: list[ByPost] = [{} for _ in range(lanes)]
        self.sizes = [0] * lanes
        self.total = 0

    def add(self, partition: int, snapshots: list[Snapshot]) -> bool:
        """Group a record's snapshots into its partition's lane; True once the windows are full."""
        lane = partition % self.pipeline.lanes
        group_by_post(snapshots, into=self.by_lane[lane])
        self.sizes[lane] += len(snapshots)
        self.total += len(snapshots)
        return self.total >= self.pipeline.window_snapshots

    async def score(self, last: bool = False) -> None:
        """Score the windows (``last``: the batch's remainder, in one lane if it is small) and start empty ones."""
        windows = list(zip(self.by_lane, self.sizes))
        if last and self.total < self.pipeline.lane_min_snapshots:  # lanes hold disjoint posts
            windows = [({post: s for window in self.by_lane for post, s in window.items()}, self.total)]
        self._reset()
        await self.pipeline.score_lanes([(window, size) for window, size in windows if window])
