"""The Redis schema: key names and field codecs that stored data depends on, and each Lua script's documented
KEYS/ARGV protocol against what its Python caller passes (the scripts themselves run in the integration tests)."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from importlib import resources

import numpy as np
import pytest

from popscore.contract import Post
from popscore.stream import redis_schema as schema
from popscore.stream.redis_schema import CONTENT, META_FIELDS, PostMeta, RecordedPrediction, RedisKeys


def test_key_names_are_the_ones_stored_data_was_written_under():
    keys = RedisKeys("ps:")
    assert (keys.sequence("p1"), keys.post("p1"), keys.awaiting, keys.maturity) == \
        ("ps:seq:p1", "ps:post:p1", "ps:awaiting", "ps:maturity")
    assert keys.sequence("p1").startswith(keys.sequence_prefix)
    assert [keys.board(name) for name in (schema.TOP_BOARD, schema.RISING_BOARD, schema.platform_board("reddit"),
                                          schema.category_board("news"))] == \
        ["ps:lb:top", "ps:lb:rising", "ps:lb:top:platform:reddit", "ps:lb:top:category:news"]
    assert RedisKeys("test:").post("p1") == "test:post:p1"


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


def declared_positions(script: str, items: int) -> dict[str, list[int]]:
    """The KEYS and ARGV positions a script's header declares for a call of ``items`` items: ``KEYS[1]`` is one
    position, ``ARGV[6+i]`` one per item (i = 1..items)."""
    positions: dict[str, list[int]] = {"KEYS": [], "ARGV": []}
    for table, index in DECLARED.findall(header(script)):
        at = [eval(index, {"__builtins__": {}}, {"i": i}) for i in range(1, items + 1)] if "i" in index \
            else [int(index)]
        positions[table] += at
    return positions


def posts(n: int) -> list[str]:
    return [f"p{i}" for i in range(n)]


CALLS = {  # script -> (number of items) -> the KEYS and ARGV its Python caller passes
    schema.MERGE_SNAPSHOTS: lambda n: schema.merge_snapshots_call(
        RedisKeys("ps:"), posts(n), {p: [b"r" * schema.RECORD.size] * 2 for p in posts(n)},
        bytes([schema.READ_META] * n), 3600, 7200, 28_800.0),
    schema.CLAIM_AWAITING: lambda n: schema.claim_awaiting_call(RedisKeys("ps:"), 100.0, 130.0, 50),
    schema.RECORD_PREDICTIONS: lambda n: schema.record_predictions_call(
        RedisKeys("ps:"), 3600, 100, "temporal",
        [RecordedPrediction(p, 1.0, 0.0, "reddit", None, "{}", 0.0) for p in posts(n)], schema.BoardLimits(),
        1_700_000_000.0),
}


def test_every_lua_script_has_one_python_caller():
    shipped = {f.name for f in resources.files("popscore.stream").joinpath("lua").iterdir() if f.name.endswith(".lua")}
    assert shipped == set(CALLS)


@pytest.mark.parametrize("script", sorted(CALLS))
@pytest.mark.parametrize("items", [1, 3])
def test_the_header_declares_exactly_the_keys_and_arguments_the_caller_passes(script, items):
    keys, args = CALLS[script](items)
    declared = declared_positions(script, items)
    assert sorted(declared["KEYS"]) == list(range(1, len(keys) + 1)), "KEYS"
    assert sorted(declared["ARGV"]) == list(range(1, len(args) + 1)), "ARGV"


@pytest.mark.parametrize("script", sorted(CALLS))
def test_the_body_reads_no_position_its_header_does_not_declare(script):
    body = schema.lua_source(script)[len(header(script)):]
    fixed = {table: set(positions) for table, positions in declared_positions(script, 0).items()}
    assert all(int(index) in fixed[table] for table, index in USED.findall(body))
