"""Producing to and consuming from the embedded broker in tests."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.client import AIOKafkaClient
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.memory_records import MemoryRecords


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


async def produce_each(bootstrap: str, records: list[tuple[str, bytes | None, bytes, int | None]],
                       compression: str | None = None) -> list:
    """(topic, key, value, partition or None) each; the RecordMetadata (topic, partition, offset) of each."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_request_size=MAX_REQUEST_BYTES,
                                compression_type=compression)
    await producer.start()
    try:
        futures = [await producer.send(topic, key=key, value=value, partition=partition)
                   for topic, key, value, partition in records]
        return list(await asyncio.gather(*futures))
    finally:
        await producer.stop()


async def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    """The offset the next record of each partition of ``topic`` will get.

    Not ListOffsets alone: Tansu answers it with the base offset of the partition's last record batch + 1, short
    of the end whenever that batch holds several records (what the worker and a lingering producer send). The
    last batch is fetched from there and its last offset taken; with a broker that answers right, the fetch
    returns the last record and changes nothing."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                fetch_max_wait_ms=50)
    await consumer.start()
    try:
        assigned = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(assigned)
        reported = await consumer.end_offsets(assigned)
        ends = {tp.partition: offset for tp, offset in reported.items()}
        pending = {tp for tp in assigned if reported[tp] > 0}
        for tp in pending:
            consumer.seek(tp, reported[tp] - 1)
        deadline = time.monotonic() + 30
        while pending:
            assert time.monotonic() < deadline, f"the last batches of {topic} not fetched: {pending}"
            for tp, batch in (await consumer.getmany(*pending, timeout_ms=500)).items():
                if batch:
                    ends[tp.partition] = max(ends[tp.partition], batch[-1].offset + 1)
                    pending.discard(tp)
    finally:
        await consumer.stop()
    return ends


async def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The offsets ``group`` has committed on ``topic`` (0 where it has none). Read with the admin client: a
    consumer in the group would join it and take partitions from the worker."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(
            group, partitions=[TopicPartition(topic, p) for p in range(partitions)])
    finally:
        await admin.close()
    return {p: max(0, offsets[TopicPartition(topic, p)].offset) if TopicPartition(topic, p) in offsets else 0
            for p in range(partitions)}


async def wait_committed(bootstrap: str, group: str, topics: list[str], partitions: int,
                         timeout_s: float = 120.0) -> None:
    """Return once ``group`` has committed, on every partition of ``topics``, up to the end offsets taken at the
    call: every record produced before the call has been consumed and acknowledged."""
    targets = {topic: await end_offsets(bootstrap, topic, partitions) for topic in topics}
    deadline = time.monotonic() + timeout_s
    while True:
        behind = {}
        for topic, ends in targets.items():
            committed = await committed_offsets(bootstrap, group, topic, partitions)
            behind.update({(topic, p): (committed[p], end) for p, end in ends.items() if committed[p] < end})
        if not behind:
            return
        assert time.monotonic() < deadline, f"not committed within {timeout_s}s: (committed, end) {behind}"
        await asyncio.sleep(0.25)


async def read_topic(bootstrap: str, topic: str, partitions: int, timeout_s: float = 60.0) -> list:
    """Every record in ``topic`` up to its end offsets at the call, in partition order: a complete read that needs
    no quiet period to know it has seen everything."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                fetch_max_wait_ms=50)
    await consumer.start()
    messages: list = []
    try:
        assigned = [TopicPartition(topic, p) for p in range(partitions)]
        ends = {TopicPartition(topic, p): end for p, end in (await end_offsets(bootstrap, topic, partitions)).items()}
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        deadline = time.monotonic() + timeout_s
        while [tp for tp in assigned if await consumer.position(tp) < ends[tp]]:
            assert time.monotonic() < deadline, f"{topic} not read to its end offsets within {timeout_s}s"
            for tp, batch in (await consumer.getmany(timeout_ms=500)).items():
                messages.extend(m for m in batch if m.offset < ends[tp])
    finally:
        await consumer.stop()
    return messages


async def record_batches(bootstrap: str, topic: str, partitions: int) -> list[tuple[int, list[bytes]]]:
    """Every record batch of ``topic`` as stored: (codec id, keys of its records). A consumer decompresses
    without saying how a batch was stored, so this fetches the raw batches."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    found: list[tuple[int, list[bytes]]] = []
    try:
        await client.force_metadata_update()
        for partition in range(partitions):
            node = client.cluster.leader_for_partition(TopicPartition(topic, partition))
            offset = 0
            while True:
                response = await client.send(node, FetchRequest(100, 1, 1 << 24, 0, [(topic, [(partition, offset,
                                                                                                  1 << 24)])]))
                records = MemoryRecords(response.topics[0][1][0][-1])  # the message set is the last field
                fetched = 0
                while (batch := records.next_batch()) is not None:
                    keys = [record.key for record in batch]
                    found.append((batch.compression_type, keys))
                    offset = batch.base_offset + len(keys)
                    fetched += 1
                if not fetched:
                    break
    finally:
        await client.close()
    return found
