"""The Redis schema: key names and field codecs that stored data depends on, and each Lua script's documented
KEYS/ARGV protocol against what its Python caller passes (the scripts themselves run in the integration tests)."""

from __future__ import annotations

import fnmatch
import re
from datetime import datetime, timezone
from importlib import resources

import numpy as np
import pytest
from aiokafka.partitioner import DefaultPartitioner
from redis.crc import key_slot

from popscore.contract import Post
from popscore.stream import redis_schema as schema
from popscore.stream.redis_schema import CONTENT, META_FIELDS, PostMeta, RecordedPrediction, RedisKeys


def test_key_names_are_the_ones_stored_data_was_written_under():
    keys = RedisKeys("ps:", 4)
    shard = keys.shard("p1")
    assert (keys.sequence("p1"), keys.post("p1"), keys.thumbnail("p1"), keys.awaiting(2), keys.maturity(2)) == \
        (f"ps:{{{shard}}}:seq:p1", f"ps:{{{shard}}}:post:p1", f"ps:{{{shard}}}:thumb:p1", "ps:{2}:awaiting",
         "ps:{2}:maturity")
    assert [keys.board(name, 3) for name in (schema.TOP_BOARD, schema.RISING_BOARD, schema.platform_board("reddit"),
                                             schema.category_board("news"))] == \
        ["ps:{3}:lb:top", "ps:{3}:lb:rising", "ps:{3}:lb:top:platform:reddit", "ps:{3}:lb:top:category:news"]
    assert (keys.boards(0), keys.board_names(schema.CATEGORY_BOARDS, 1)) == ("ps:{0}:boards", "ps:{1}:boards:categories")
    assert RedisKeys("test:", 4).post("p1") == f"test:{{{shard}}}:post:p1"
    assert keys.is_sequence(keys.sequence("p1").encode()) and not keys.is_sequence(keys.post("p1").encode())
    assert fnmatch.fnmatchcase(keys.sequence("p1"), keys.sequence_pattern())
    with pytest.raises(ValueError):
        RedisKeys("ps:{x}:", 4)


def test_a_posts_shard_is_the_kafka_partition_a_keyed_send_picks():
    """The producers' default partitioner, here aiokafka's own (the Java client's murmur2)."""
    partitioner = DefaultPartitioner()
    for partitions in (1, 4, 7, 64):
        keys = RedisKeys("ps:", partitions)
        for post_id in ("p1", "hn-38000001", "reddit_t3_abc", "x" * 128):
            assert keys.shard(post_id) == partitioner(post_id.encode(), list(range(partitions)), [])


def test_every_key_of_a_post_and_of_its_shard_is_in_one_cluster_slot():
    keys = RedisKeys("ps:", 8)
    for post_id in (f"post-{i}" for i in range(50)):
        shard = keys.shard(post_id)
        names = [keys.sequence(post_id), keys.post(post_id), keys.thumbnail(post_id), keys.awaiting(shard),
                 keys.maturity(shard), keys.boards(shard), keys.board(schema.TOP_BOARD, shard),
                 keys.board_names(schema.PLATFORM_BOARDS, shard)]
        assert len({key_slot(name.encode()) for name in names}) == 1
    assert len({key_slot(keys.awaiting(shard).encode()) for shard in keys.all_shards}) == 8


def test_script_calls_touch_one_slot_each():
    keys = RedisKeys("ps:", 4)
    groups = keys.by_shard(f"post-{i}" for i in range(40))
    assert sorted(groups) == [0, 1, 2, 3] and sum(map(len, groups.values())) == 40
    for shard, post_ids in groups.items():
        merge_keys, _ = schema.merge_snapshots_call(keys, post_ids, {p: [b"r"] for p in post_ids},
                                                    bytes([schema.READ_META] * len(post_ids)), 3600, 7200, 28_800.0)
        rows = [RecordedPrediction(p, 1.0, 0.0, "reddit" if i % 2 else "mystery", "news" if i % 3 else None, "{}",
                                   0.0) for i, p in enumerate(post_ids)]
        record_keys, _ = schema.record_predictions_call(keys, shard, 3600, 100, "temporal", rows,
                                                        schema.BoardLimits(), 1_700_000_000.0)
        claim_keys, _ = schema.claim_awaiting_call(keys, shard, 1.0, 2.0, 10)
        slots = {key_slot(key.encode()) for key in merge_keys + record_keys + claim_keys}
        assert slots == {key_slot(keys.tag(shard).encode())}


def test_a_board_read_across_shards_is_the_best_of_all_their_members():
    shards = [[(b"a", 9.0), (b"b", 5.0)], [(b"c", 7.0), (b"d", 5.0)], []]
    assert schema.merge_rankings(shards, 3) == [("a", 9.0), ("c", 7.0), ("d", 5.0)]  # a tie: member descending
    assert schema.merge_rankings(shards, 10) == [("a", 9.0), ("c", 7.0), ("d", 5.0), ("b", 5.0)]


def test_a_post_hash_written_from_a_post_event_reads_back_as_its_metadata():
    post = Post(post_id="p1", platform="reddit", created_at=datetime.fromtimestamp(1_700_000_000, timezone.utc),
                text={"title": "A title"}, attributes={"category": "news"})
    fields = schema.encode_post(post, np.array([1.5, 2.5]), b"vector", embedded_title=True)
    stored = {name.encode(): value if isinstance(value, bytes) else value.encode() for name, value in fields.items()}
    assert PostMeta.from_hash(stored) == PostMeta(1_700_000_000.0, "reddit", "news", b"vector")
    assert PostMeta.from_values(*(stored.get(name.encode()) for name in META_FIELDS)) == PostMeta.from_hash(stored)
    assert np.frombuffer(stored[schema.STATIC.encode()], np.float32).tolist() == [1.5, 2.5]
    assert stored[schema.TITLE.encode()] == b"A title"
    bare = schema.encode_post(post.model_copy(update={"attributes": {}}), np.zeros(2), None, embedded_title=False)
    assert CONTENT not in bare and schema.TITLE not in bare and schema.CATEGORY not in bare
    assert PostMeta.from_hash({}) == PostMeta()


def test_prediction_and_eval_fields_are_told_apart_from_the_rest_of_the_hash():
    kept = schema.eval_field("popscore_reddit_temporal", "3", 6.0)
    assert kept == "eval:popscore_reddit_temporal:3:6"
    assert schema.parse_eval_field(kept) == ("popscore_reddit_temporal", "3", "6")
    assert schema.parse_eval_field(schema.eval_field("persistence", "1", 0.5)) == ("persistence", "1", "0.5")
    fields = {schema.prediction_field("temporal").encode(): b'{"score": 3.0}', b"prediction:static": b"{}",
              kept.encode(): b"1.25", b"platform": b"reddit", schema.PREDICTED_TO.encode(): b"1700000000"}
    assert schema.latest_predictions(fields) == {"temporal": {"score": 3.0}, "static": {}}
    assert schema.kept_predictions(fields) == {kept: 1.25}


def test_the_post_hash_outlives_its_sequence():
    assert schema.post_ttl_s(86_400, 3_600) == 90_000


# --- the Lua scripts' protocols ---------------------------------------------------------------------------

DECLARED = re.compile(r"^--\s+(KEYS|ARGV)\[([^\]]+)\]", re.MULTILINE)
USED = re.compile(r"\b(KEYS|ARGV)\[(\d+)\]")


def header(script: str) -> str:
    """The comment lines at the top of a script."""
    lines = schema.lua_source(script).splitlines()
    return "\n".join(line for line in lines[:next(i for i, line in enumerate(lines) if not line.startswith("--"))])


def declared_positions(script: str, items: int, boards: int = 0) -> dict[str, list[int]]:
    """The KEYS and ARGV positions a script's header declares for a call of ``items`` items (``n``) naming
    ``boards`` boards: ``KEYS[1]`` is one position, ``ARGV[6+i]`` one per item (i = 1..n), ``KEYS[7+n+j]`` one per
    board (j = 1..boards)."""
    positions: dict[str, list[int]] = {"KEYS": [], "ARGV": []}
    for table, index in DECLARED.findall(header(script)):
        names = set(re.findall(r"[a-z]+", index))
        assert names <= {"i", "j", "n"}, index
        count = items if "i" in names else boards if "j" in names else 1
        positions[table] += [eval(index, {"__builtins__": {}}, {"i": at, "j": at, "n": items})
                             for at in range(1, count + 1)]
    return positions


def posts(n: int) -> list[str]:
    return [f"p{i}" for i in range(n)]


KEYS = RedisKeys("ps:", 1)  # one shard: every post of a call is of it
CALLS = {  # script -> (number of items) -> the KEYS and ARGV its Python caller passes
    schema.MERGE_SNAPSHOTS: lambda n: schema.merge_snapshots_call(
        KEYS, posts(n), {p: [b"r" * schema.RECORD.size] * 2 for p in posts(n)},
        bytes([schema.READ_META] * n), 3600, 7200, 28_800.0),
    schema.CLAIM_AWAITING: lambda n: schema.claim_awaiting_call(KEYS, 0, 100.0, 130.0, 50),
    schema.RELEASE_AWAITING: lambda n: schema.release_awaiting_call(KEYS, 0, 130.0, posts(n)),
    schema.CLAIM_MEDIA_RETRIES: lambda n: schema.claim_media_retries_call(KEYS, 0, 100.0, 220.0, 50),
    schema.RECORD_PREDICTIONS: lambda n: schema.record_predictions_call(
        KEYS, 0, 3600, 100, "temporal",
        [RecordedPrediction(p, 1.0, 0.0, ("reddit", "hn")[i % 2], "news" if i == 0 else None, "{}", 0.0)
         for i, p in enumerate(posts(n))], schema.BoardLimits(), 1_700_000_000.0),
}
BOARDS = {schema.RECORD_PREDICTIONS: {1: 2, 3: 3}}
"""The boards a call's rows may enter beyond the fixed ones: reddit's and news' (one row), and hn's (three)."""


def test_every_lua_script_has_one_python_caller():
    shipped = {f.name for f in resources.files("popscore.stream").joinpath("lua").iterdir() if f.name.endswith(".lua")}
    assert shipped == set(CALLS)


@pytest.mark.parametrize("script", sorted(CALLS))
@pytest.mark.parametrize("items", [1, 3])
def test_the_header_declares_exactly_the_keys_and_arguments_the_caller_passes(script, items):
    keys, args = CALLS[script](items)
    declared = declared_positions(script, items, BOARDS.get(script, {}).get(items, 0))
    assert sorted(declared["KEYS"]) == list(range(1, len(keys) + 1)), "KEYS"
    assert sorted(declared["ARGV"]) == list(range(1, len(args) + 1)), "ARGV"


@pytest.mark.parametrize("script", sorted(CALLS))
def test_the_body_reads_no_position_its_header_does_not_declare(script):
    body = schema.lua_source(script)[len(header(script)):]
    fixed = {table: set(positions) for table, positions in declared_positions(script, 0).items()}
    assert all(int(index) in fixed[table] for table, index in USED.findall(body))
