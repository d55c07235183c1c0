"""Leaderboards against a real Redis: after any sequence of batches each board holds exactly the best ``size``
of its posts' latest scores, as if every prediction had been added and the board trimmed."""

from __future__ import annotations

import asyncio
import random
import uuid

import pytest
import redis.asyncio as aioredis

from popscore.stream.leaderboard import Leaderboards
from popscore.stream.redis_schema import PLATFORM, PREDICTED_TO, RISING_BOARD, TOP_BOARD, PostMeta, \
    RecordedPrediction, RedisKeys, category_board, eval_field, kept_predictions, latest_predictions, platform_board

pytestmark = pytest.mark.integration

SIZE = 10
PER_CALL = 16  # several script calls per batch


def expected_boards(calls: list[list[RecordedPrediction]]) -> dict[str, list[tuple[str, float]]]:
    """The reference: each script call's predictions added to their boards, each board then trimmed to its
    best ``SIZE``."""
    boards: dict[str, dict[str, float]] = {}
    for call in calls:
        for p in call:
            names = [TOP_BOARD, platform_board(p.platform)] + ([category_board(p.category)] if p.category else [])
            for name in names:
                boards.setdefault(name, {})[p.post_id] = p.score
            boards.setdefault(RISING_BOARD, {})[p.post_id] = p.rising
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
            keys = RedisKeys(prefix)
            names = [key.decode()[len(keys.board("")):] async for key in client.scan_iter(match=keys.board("*"))]
            ttls = [await client.ttl(keys.post(post)) for post in posts]
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


def test_a_recorded_prediction_is_read_back_through_the_schema(redis_url):
    """The script spells the keys and fields itself: what it writes must be what ``redis_schema`` reads."""
    prefix = f"lbtest-{uuid.uuid4().hex[:8]}:"
    keys = RedisKeys(prefix)
    first = eval_field("popscore_reddit_temporal", "3", 6)

    def prediction(as_of: int, kept: float) -> RecordedPrediction:
        return RecordedPrediction(post_id="p1", score=2.5, rising=0.5, platform="reddit", category=None,
                                  latest_view=f'{{"as_of": {as_of}}}', matures_at=1_700_086_400.0,
                                  kept_for_evaluation=((first, kept),), as_of=as_of)

    async def scenario():
        client = aioredis.Redis.from_url(redis_url)
        try:
            boards = Leaderboards(client, prefix, size=SIZE, ttl_s=600)
            await client.hset(keys.post("p1"), PLATFORM, "reddit")
            await boards.record("temporal", [prediction(1_700_000_000, 1.25)])
            await boards.record("temporal", [prediction(1_700_003_600, 9.0)])  # the first kept value stays
            await boards.record("static", [RecordedPrediction("p1", 1.0, 0.0, "reddit", None, '{"as_of": 0}', 0.0)])
            fields = await client.hgetall(keys.post("p1"))
            return fields, await client.zscore(keys.maturity, "p1"), await boards.top(platform_board("reddit"))
        finally:
            await client.aclose()

    fields, matures_at, board = asyncio.run(scenario())
    assert latest_predictions(fields) == {"temporal": {"as_of": 1_700_003_600}, "static": {"as_of": 0}}
    assert fields[PREDICTED_TO.encode()] == b"1700003600"
    assert kept_predictions(fields) == {first: 1.25}
    assert PostMeta.from_hash(fields).platform == "reddit"
    assert matures_at == 1_700_086_400.0 and board == [("p1", 2.5)]
