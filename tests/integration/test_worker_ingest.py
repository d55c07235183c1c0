"""N valid and M invalid records through the running worker: N sequences in Redis, M dead letters."""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.request
import uuid

import pytest
import redis

from popscore.contract import DeadLetter
from popscore.stream.redis_schema import RedisKeys, decode_sequence
from tests.integration.kafka_io import produce
from tests.integration.outcomes import read_all, wait_processed

pytestmark = pytest.mark.integration


def snapshot(post_id: str, minute: int, likes: int) -> bytes:
    return json.dumps({"schema": "snapshot.v1", "post_id": post_id,
                       "observed_at": f"2024-05-01T10:{minute:02d}:00Z", "counts": {"likes": likes}}).encode()


def invalid_records(prefix: str) -> list[tuple[bytes, bytes, str]]:
    """(key, value, expected reason) for a catalogue of bad input."""
    return [
        (f"{prefix}-bad0".encode(), b"\xff not utf-8", "not_utf8"),
        (f"{prefix}-bad1".encode(), b"{broken json", "not_json"),
        (f"{prefix}-bad2".encode(), b"[]", "not_an_object"),
        (f"{prefix}-bad3".encode(), json.dumps({"schema": "snapshot.v9"}).encode(), "unknown_schema"),
        (f"{prefix}-bad4".encode(), snapshot(f"{prefix}-bad4", 1, -5), "invalid"),
        (f"{prefix}-bad5".encode(), snapshot(f"{prefix}-other", 1, 5), "key_mismatch"),
        (f"{prefix}-bad6".encode(), json.dumps({"schema": "post.v1", "post_id": "x", "platform": "x",
                                                "created_at": "2024-05-01T10:00:00Z"}).encode(), "wrong_topic"),
    ]


def metric_by_label(metrics_url: str, name: str, label: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    return {sample.labels[label]: sample.value for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name == name}


def merge_outcomes(metrics_url: str) -> dict[str, float]:
    return metric_by_label(metrics_url, "popscore_sequence_merges_total", "outcome")


def test_valid_snapshots_update_sequences_and_invalid_ones_reach_the_dead_letters(stack_settings, kafka_bootstrap,
                                                                                   redis_url, endpoints):
    metrics_url = endpoints.as_dict()["worker_metrics"]
    before = merge_outcomes(metrics_url)
    metadata_before = metric_by_label(metrics_url, "popscore_post_metadata_total", "source")
    prefix = f"t{uuid.uuid4().hex[:8]}"
    n_posts, per_post = 40, 3
    valid = [(f"{prefix}-{i}".encode(), snapshot(f"{prefix}-{i}", minute, likes=minute * (i + 1)))
             for i in range(n_posts) for minute in range(per_post)]
    bad = invalid_records(prefix)
    records = valid + [(key, value) for key, value, _ in bad]
    # Interleave the bad ones with the good ones: one bad record must not stall or lose its neighbours.
    records = [records[i] for i in sorted(range(len(records)), key=lambda i: (i * 7919) % len(records))]
    topics = stack_settings.kafka.topics
    asyncio.run(produce(kafka_bootstrap, topics.snapshots, records))

    # Everything those records cause is out once the worker has committed them: the exact checks below
    # (no duplicate letter, no stray key, exact counters) cannot pass just because the worker is slow.
    wait_processed(stack_settings, kafka_bootstrap)
    letters = read_all(stack_settings, kafka_bootstrap, topics.deadletter)
    client = redis.Redis.from_url(redis_url)
    keys = RedisKeys.of(stack_settings)

    mine = [DeadLetter.model_validate_json(m.value) for m in letters if m.key and m.key.decode().startswith(prefix)]
    assert sorted(letter.reason.value for letter in mine) == sorted(reason for _, _, reason in bad)
    originals = {base64.b64decode(letter.value_b64) for letter in mine}
    assert originals == {value for _, value, _ in bad}
    assert all(letter.topic == topics.snapshots and letter.detail for letter in mine)

    stored = sorted(k.decode() for k in client.keys(keys.sequence_pattern(f"{prefix}-*")))
    assert stored == sorted(keys.sequence(f"{prefix}-{i}") for i in range(n_posts))
    for i in range(n_posts):
        seq = decode_sequence(client.get(keys.sequence(f"{prefix}-{i}")))
        assert seq[:, 2].tolist() == [minute * (i + 1) for minute in range(per_post)]  # likes, in time order

    # Counters stay exact: each valid snapshot merged once (appended, or inserted out of order: the records
    # were shuffled), and the same snapshots again are all duplicates.
    after = merge_outcomes(metrics_url)
    delta = {outcome: after[outcome] - before.get(outcome, 0) for outcome in after}
    assert delta.get("appended", 0) + delta.get("out_of_order", 0) == len(valid)
    assert delta.get("duplicate", 0) == delta.get("corrected", 0) == 0
    # These posts never had a post event: nothing to cache, every merge read their (empty) hash from Redis.
    metadata = metric_by_label(metrics_url, "popscore_post_metadata_total", "source")
    assert metadata.get("cache", 0) == metadata_before.get("cache", 0)
    assert n_posts <= metadata["redis"] - metadata_before.get("redis", 0) <= len(valid)
    asyncio.run(produce(kafka_bootstrap, topics.snapshots, valid))
    wait_processed(stack_settings, kafka_bootstrap)
    again = merge_outcomes(metrics_url)
    assert {outcome: again[outcome] - after.get(outcome, 0) for outcome in again} == {
        **{outcome: 0 for outcome in after}, "duplicate": len(valid)}
