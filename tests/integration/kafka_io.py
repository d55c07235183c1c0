"""Producing to and consuming from the embedded broker in tests."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer


async def produce(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, key=key, value=value) for key, value in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


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
