"""Leaderboards against a real Redis: after any sequence of batches each board holds exactly the best ``size``
of its posts' latest scores, as if every prediction had been added and the board trimmed."""

from __future__ import annotations

import asyncio
import random
import uuid

import pytest
import redis.asyncio as aioredis

from popscore.stream.leaderboard import Leaderboards, RecordedPrediction

pytestmark = pytest.mark.integration

SIZE = 10
PER_CALL = 16  # several script calls per batch


def expected_boards(calls: list[list[RecordedPrediction]]) -> dict[str, list[tuple[str, float]]]:
    """The reference: each script call's predictions added to their boards, each board then trimmed to its
    best ``SIZE``."""
    boards: dict[str, dict[str, float]] = {}
    for call in calls:
        for p in call:
            names = ["top", f"top:platform:{p.platform}"] + ([f"top:category:{p.category}"] if p.category else [])
            for name in names:
                boards.setdefault(name, {})[p.post_id] = p.score
            boards.setdefault("rising", {})[p.post_id] = p.rising
        for name, board in boards.items():
            best = sorted(board.items(), key=lambda item: (item[1], item[0]))[-SIZE:]  # Redis's rank order
            boards[name] = dict(best)
    return {name: sorted(board.items(), key=lambda item: (-item[1], item[0])) for name, board in boards.items()}


def test_boards_equal_adding_every_prediction_and_trimming(redis_url):
    rng = random.Random(7)
    posts = [f"p{i:03d}" for i in range(60)]
    platform = {post: rng.choice(["reddit", "youtube"]) for post in posts}
    category = {post: rng.choice(["news", "music", None]) for post in posts}

    def prediction(post: str) -> RecordedPrediction:
        # Scores move both ways between batches, so board members fall below newcomers and leave.
        return RecordedPrediction(post_id=post, score=round(rng.uniform(0, 10), 6), rising=round(rng.gauss(0, 1), 6),
                                  platform=platform[post], category=category[post], latest_view="{}",
                                  matures_at=1_700_000_000.0)

    batches = [[prediction(post) for post in rng.sample(posts, rng.randint(1, 40))] for _ in range(30)]
    prefix = f"lbtest-{uuid.uuid4().hex[:8]}:"

    async def scenario():
        client = aioredis.Redis.from_url(redis_url)
        try:
            boards = Leaderboards(client, prefix, size=SIZE, ttl_s=600)
            for batch in batches:
                await boards.record("temporal", batch, per_call=PER_CALL)
            names = [key.decode()[len(prefix) + 3:] async for key in client.scan_iter(match=f"{prefix}lb:*")]
            ttls = [await client.ttl(f"{prefix}post:{post}") for post in posts]
            return {name: await boards.top(name, k=SIZE + 5) for name in names}, ttls
        finally:
            await client.aclose()

    stored, ttls = asyncio.run(scenario())
    assert all(0 < ttl <= 600 for ttl in ttls)  # the post hashes the predictions created expire
    expected = expected_boards([batch[i:i + PER_CALL] for batch in batches for i in range(0, len(batch), PER_CALL)])
    assert set(stored) == set(expected) and len(expected) >= 6
    for name, entries in expected.items():
        assert [post for post, _ in stored[name]] == [post for post, _ in entries], name
        assert [score for _, score in stored[name]] == pytest.approx([score for _, score in entries]), name
