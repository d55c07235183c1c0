"""Compressed record batches both ways: ingestion pipelines may compress with any of Kafka's codecs, and the
worker compresses what it produces (``kafka.producer_compression``)."""

from __future__ import annotations

import asyncio
import types
import uuid

import pytest
from aiokafka.record.default_records import DefaultRecordBatch

from tests.integration.kafka_io import produce_each, record_batches
from tests.integration.outcomes import Traffic, check_nothing_lost

pytestmark = pytest.mark.integration

CODEC_IDS = {"none": 0, "gzip": DefaultRecordBatch.CODEC_GZIP, "snappy": DefaultRecordBatch.CODEC_SNAPPY,
             "lz4": DefaultRecordBatch.CODEC_LZ4, "zstd": DefaultRecordBatch.CODEC_ZSTD}
INPUT_CODECS = ("gzip", "snappy", "lz4", "zstd")


def test_input_in_every_codec_is_scored_and_the_predictions_are_stored_compressed(stack_settings, embedded_stack):
    stack = types.SimpleNamespace(settings=stack_settings, state=embedded_stack)
    topics, bootstrap = stack_settings.kafka.topics, embedded_stack.endpoints_obj().broker_bootstrap
    traffic = Traffic(f"codec{uuid.uuid4().hex[:6]}", n_posts=16, n_snapshots=3)
    # Each post and its snapshots come from a producer of one codec, a quarter of the posts per codec.
    for i, codec in enumerate(INPUT_CODECS):
        mine = set(traffic.post_ids[i::len(INPUT_CODECS)])
        records = [(topics.posts, key, value, None) for key, value in traffic.posts if key.decode() in mine]
        records += [(topics.snapshots, post_id.encode(), value, None) for post_id, _, value in traffic.snapshots
                    if post_id in mine]
        asyncio.run(produce_each(bootstrap, records, compression=codec))

    check_nothing_lost(stack, traffic)

    ours = {post_id.encode() for post_id in traffic.post_ids}
    codecs = {codec for codec, keys in asyncio.run(record_batches(bootstrap, topics.predictions, topics.partitions))
              if ours & set(keys)}
    assert codecs == {CODEC_IDS[stack_settings.kafka.producer_compression]}
