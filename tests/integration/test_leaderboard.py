"""Leaderboards against a real Redis: after any sequence of batches each shard's board holds exactly the best
``size`` of its posts' latest scores, as if every prediction had been added and the board trimmed, and a board
reads as the best of its shards'."""

from __future__ import annotations

import asyncio
import random
import uuid

import pytest
import redis.asyncio as aioredis

from popscore.stream.leaderboard import Leaderboards
from popscore.stream.redis_schema import PLATFORM, PREDICTED_TO, RISING_BOARD, TOP_BOARD, PostMeta, \
    RecordedPrediction, RedisKeys, category_board, eval_field, kept_predictions, latest_predictions, \
    merge_rankings, platform_board

pytestmark = pytest.mark.integration

SIZE = 10
PER_CALL = 16  # several script calls per batch
SHARDS = 4


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
    keys = RedisKeys(f"lbtest-{uuid.uuid4().hex[:8]}:", SHARDS)

    async def scenario():
        client = aioredis.Redis.from_url(redis_url)
        try:
            boards = Leaderboards(client, keys, size=SIZE, ttl_s=600)
            for batch in batches:
                await boards.record("temporal", batch, per_call=PER_CALL)
            shard_boards = {}
            for shard in keys.all_shards:
                names = [key.decode()[len(keys.board("", shard)):]
                         async for key in client.scan_iter(match=keys.board("*", shard))]
                shard_boards[shard] = {name: await client.zrevrange(keys.board(name, shard), 0, -1, withscores=True)
                                       for name in names}
            ttls = [await client.ttl(keys.post(post)) for post in posts]
            names = {name for found in shard_boards.values() for name in found}
            return shard_boards, {name: await boards.top(name, k=SIZE) for name in names}, ttls
        finally:
            await client.aclose()

    shard_boards, read, ttls = asyncio.run(scenario())
    assert all(0 < ttl <= 600 for ttl in ttls)  # the post hashes the predictions created expire
    # per shard: the calls Leaderboards.record makes, each of one shard's predictions
    expected = {}
    for shard in keys.all_shards:
        calls = [[p for p in batch if keys.shard(p.post_id) == shard] for batch in batches]
        expected[shard] = expected_boards([call[i:i + PER_CALL] for call in calls for i in range(0, len(call), PER_CALL)])
        assert set(shard_boards[shard]) == set(expected[shard]), shard
        for name, entries in expected[shard].items():
            stored = [(member.decode(), score) for member, score in shard_boards[shard][name]]
            assert [post for post, _ in stored] == [post for post, _ in entries], (shard, name)
            assert [score for _, score in stored] == pytest.approx([score for _, score in entries]), (shard, name)
    assert len(read) >= 6 and all(len(found) >= 4 for found in shard_boards.values())
    for name, entries in read.items():  # a board reads as the best SIZE of all its shards'
        best = merge_rankings([expected[shard].get(name, []) for shard in keys.all_shards], SIZE)
        assert [post for post, _ in entries] == [post for post, _ in best], name


def test_a_recorded_prediction_is_read_back_through_the_schema(redis_url):
    """The script spells the keys and fields itself: what it writes must be what ``redis_schema`` reads."""
    keys = RedisKeys(f"lbtest-{uuid.uuid4().hex[:8]}:", SHARDS)
    first = eval_field("popscore_reddit_temporal", "3", 6)

    def prediction(as_of: int, kept: float) -> RecordedPrediction:
        return RecordedPrediction(post_id="p1", score=2.5, rising=0.5, platform="reddit", category=None,
                                  latest_view=f'{{"as_of": {as_of}}}', matures_at=1_700_086_400.0,
                                  kept_for_evaluation=((first, kept),), as_of=as_of)

    async def scenario():
        client = aioredis.Redis.from_url(redis_url)
        try:
            boards = Leaderboards(client, keys, size=SIZE, ttl_s=600)
            await client.hset(keys.post("p1"), PLATFORM, "reddit")
            await boards.record("temporal", [prediction(1_700_000_000, 1.25)])
            await boards.record("temporal", [prediction(1_700_003_600, 9.0)])  # the first kept value stays
            await boards.record("static", [RecordedPrediction("p1", 1.0, 0.0, "reddit", None, '{"as_of": 0}', 0.0)])
            fields = await client.hgetall(keys.post("p1"))
            return fields, await client.zscore(keys.maturity(keys.shard("p1")), "p1"), await boards.top(platform_board("reddit"))
        finally:
            await client.aclose()

    fields, matures_at, board = asyncio.run(scenario())
    assert latest_predictions(fields) == {"temporal": {"as_of": 1_700_003_600}, "static": {"as_of": 0}}
    assert fields[PREDICTED_TO.encode()] == b"1700003600"
    assert kept_predictions(fields) == {first: 1.25}
    assert PostMeta.from_hash(fields).platform == "reddit"
    assert matures_at == 1_700_086_400.0 and board == [("p1", 2.5)]


def test_an_older_prediction_is_never_recorded_as_the_latest(redis_url):
    """Latest is by observation, not by arrival: a temporal prediction as of an earlier observation than the one
    recorded (a re-score that read the sequence before a newer snapshot was scored) leaves the latest view,
    predicted_to and the boards as they were, and is counted; one of the same observation replaces it (the media
    retry's and the without_post re-score's replacements), and the other posts of the call are recorded as ever."""
    keys = RedisKeys(f"lbtest-{uuid.uuid4().hex[:8]}:", 1)  # one shard: p1 and p2 in one call
    first = eval_field("popscore_reddit_temporal", "3", 1)

    def prediction(post: str, as_of: int, score: float, kept=()) -> RecordedPrediction:
        return RecordedPrediction(post_id=post, score=score, rising=score / 10, platform="reddit", category="news",
                                  latest_view=f'{{"as_of": {as_of}, "score": {score}}}', matures_at=1_700_086_400.0,
                                  kept_for_evaluation=kept, as_of=as_of, known_platform=True)

    async def scenario():
        client = aioredis.Redis.from_url(redis_url)
        try:
            boards = Leaderboards(client, keys, size=SIZE, ttl_s=600)
            stale = [await boards.record("temporal", [prediction("p1", 1_700_003_600, 5.0)])]
            # p1's older prediction (raced in late) with p2's first, in one call
            stale.append(await boards.record("temporal", [prediction("p1", 1_700_000_000, 9.0, ((first, 2.3),)),
                                                          prediction("p2", 1_700_000_000, 3.0)]))
            older = (await client.hgetall(keys.post("p1")), await boards.top(TOP_BOARD),
                     await boards.top(RISING_BOARD), await boards.top(category_board("news")))
            stale.append(await boards.record("temporal", [prediction("p1", 1_700_003_600, 7.0)]))  # same as_of
            same = (await client.hgetall(keys.post("p1")), await boards.top(TOP_BOARD))
            return stale, older, same
        finally:
            await client.aclose()

    stale, (fields, top, rising, news), (replaced, top_after) = asyncio.run(scenario())
    assert latest_predictions(fields)["temporal"] == {"as_of": 1_700_003_600, "score": 5.0}
    assert fields[PREDICTED_TO.encode()] == b"1700003600"
    assert top == news == [("p1", 5.0), ("p2", 3.0)] and rising == [("p1", 0.5), ("p2", 0.3)]
    assert stale == [0, 1, 0]
    assert kept_predictions(fields) == {first: 2.3}  # the first prediction at that age: first-write-wins, as ever
    assert latest_predictions(replaced)["temporal"] == {"as_of": 1_700_003_600, "score": 7.0}
    assert top_after == [("p1", 7.0), ("p2", 3.0)]
