"""Producing to and consuming from the embedded broker in tests."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner


MAX_REQUEST_BYTES = 4 * 1024 * 1024  # the fuzz tests send records over the worker's 1 MiB cap


async def produce(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
    await produce_each(bootstrap, [(topic, key, value, None) for key, value in records])


async def produce_to_partitions(bootstrap: str, topic: str, records: list[tuple[int, bytes]]) -> None:
    """Unkeyed records to explicit partitions (how snapshot-batch envelopes are sent)."""
    await produce_each(bootstrap, [(topic, None, value, partition) for partition, value in records])


def partition_of(key: bytes, partitions: int) -> int:
    """The partition a keyed send picks (aiokafka's default murmur2 partitioner)."""
    every = list(range(partitions))
    return DefaultPartitioner()(key, every, every)


async def consume_until(bootstrap: str, topic: str, done, timeout_s: float = 60.0) -> list:
    """All messages of ``topic`` from the beginning, until ``done(messages)`` holds or the time is up."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None, fetch_max_wait_ms=50)
    await consumer.start()
    messages: list = []
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not done(messages):
            batch = await consumer.getmany(timeout_ms=500)
            for partition_messages in batch.values():
                messages.extend(partition_messages)
    finally:
        await consumer.stop()
    return messages


async def produce_each(bootstrap: str, records: list[tuple[str, bytes | None, bytes, int | None]]) -> list:
    """(topic, key, value, partition or None) each; the RecordMetadata (topic, partition, offset) of each."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_request_size=MAX_REQUEST_BYTES)
    await producer.start()
    try:
        futures = [await producer.send(topic, key=key, value=value, partition=partition)
                   for topic, key, value, partition in records]
        return list(await asyncio.gather(*futures))
    finally:
        await producer.stop()
