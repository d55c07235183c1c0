"""Thousands of hostile records of every kind in tests/fuzz_corpus.py, mixed with valid ones, through the real
stack: no agent crashes, every invalid record (or invalid snapshot of an envelope) dead-lettered exactly once with
its reason, every valid snapshot stored once, every post's latest observation predicted, counters exact."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections import Counter, defaultdict
from datetime import datetime

import pytest

from popscore.tools.stack.process import group_alive
from tests.fuzz_corpus import corpus
from tests.integration.kafka_io import partition_of, produce_each
from tests.integration.outcomes import check_outputs, metric, read_all, wait_processed

pytestmark = pytest.mark.integration

N_INVALID = 10_000
HEAVY_BYTES = 50_000  # records this large (nesting bombs, oversized, 10,001-snapshot envelopes) are sent a few
HEAVY_EACH = 4        # times each, not hundreds: the embedded broker keeps everything in memory


def fuzz_records(n_invalid: int):
    """The corpus in its mixed order, with ``n_invalid`` invalid records (heavy kinds capped)."""
    records, heavy, invalid = [], Counter(), 0
    for record in corpus(2 * n_invalid, n_posts=60, snapshots_per_post=3, prefix="fz", seed=17):
        if record.kind != "valid":
            if invalid == n_invalid:
                continue
            if len(record.value) > HEAVY_BYTES:
                heavy[record.kind] += 1
                if heavy[record.kind] > HEAVY_EACH:
                    continue
            invalid += 1
        records.append(record)
    return records


def epoch(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00")).timestamp())


def test_hostile_records_are_dead_lettered_and_valid_ones_processed(private_stack):
    settings, endpoints = private_stack.settings, private_stack.state.endpoints_obj()
    topics, partitions = settings.kafka.topics, settings.kafka.topics.partitions
    worker = int(private_stack.state.processes["worker"]["pid"])
    records = fuzz_records(N_INVALID)
    invalid = [r for r in records if r.kind != "valid"]
    assert len(invalid) >= N_INVALID and len({r.kind for r in invalid}) >= 30

    real_topic = {"posts": topics.posts, "snapshots": topics.snapshots}
    sent = asyncio.run(produce_each(endpoints.broker_bootstrap, [
        (real_topic[r.topic], r.key, r.value, partition_of(r.route_key, partitions) if r.route_key else None)
        for r in records]))

    # what must come out: one dead letter per invalid record (per invalid snapshot of a mixed envelope)
    expected_letters = {}
    for record, meta in zip(records, sent):
        where = (meta.topic, meta.partition, meta.offset)
        if record.kind == "valid":
            continue
        for index in record.invalid_indices or (None,):
            expected_letters[(*where, index)] = (record.kind, record.expected_reason)
    # and every valid snapshot stored: the valid records, and the valid snapshots of mixed envelopes
    expected_times = defaultdict(list)
    for record in records:
        if record.topic != "snapshots" or record.kind not in ("valid", "envelope_some_invalid"):
            continue
        body = json.loads(record.value)
        snapshots = body.get("snapshots", [body])
        for index, snapshot in enumerate(snapshots):
            if index not in record.invalid_indices:
                expected_times[snapshot["post_id"]].append(epoch(snapshot["observed_at"]))

    started = time.monotonic()
    # Once every record is committed, every letter it caused is on the topic: "exactly once" is checked on a
    # complete read, not on what had arrived after a pause.
    wait_processed(settings, endpoints.broker_bootstrap, timeout_s=300)
    letters = read_all(settings, endpoints.broker_bootstrap, topics.deadletter)
    seen = Counter()
    reasons = {}
    for message in letters:
        letter = json.loads(message.value)
        where = (letter["topic"], letter["partition"], letter["offset"], letter.get("index"))
        seen[where] += 1
        reasons[where] = letter["reason"]
        assert len(message.value) < 1_000_000, "a dead letter must fit the producer's request limit"
        if letter.get("index") is not None:  # the invalid snapshot itself, not its whole envelope
            assert "post_id" in json.loads(base64.b64decode(letter["value_b64"])), letter
    missing = {k: v for k, v in expected_letters.items() if k not in seen}
    assert not missing, f"{len(missing)} invalid records without a dead letter, e.g. {list(missing.items())[:5]}"
    assert set(seen) == set(expected_letters), "dead letters for records that were valid"
    assert all(n == 1 for n in seen.values()), "a record dead-lettered more than once"
    wrong = {k: (expected_letters[k], reasons[k]) for k in expected_letters if reasons[k] != expected_letters[k][1]}
    assert not wrong, f"wrong reasons: {list(wrong.items())[:5]}"

    figures = check_outputs(private_stack, expected_times, platform=None, timeout_s=180)
    assert group_alive(worker), "the worker died"
    assert metric(private_stack, "popscore_agent_crashes_total") == 0
    assert metric(private_stack, "popscore_dead_letters_total") == len(expected_letters)
    assert metric(private_stack, "popscore_records_consumed_total") == len(records)
    print(f"fuzz: {len(records)} records sent ({len(invalid)} invalid of {len({r.kind for r in invalid})} kinds), "
          f"{len(letters)} dead letters, {figures['observations']} observations of {figures['posts']} posts "
          f"stored and predicted, {time.monotonic() - started:.0f}s")
