"""Faust's aiokafka transport under the URL scheme ``popscore-kafka://`` (the ``faust.transports`` entry point
in pyproject.toml), changed in three places; each override is listed, with what it relies on, in the
package docstring (``popscore.stream.faust_ext``).

- The worker consumer's fetch wait is ``app.fetch_max_wait_ms`` (set by ``create_app`` from the settings)
  instead of Faust's fixed 1500 ms. Apache Kafka answers a fetch as soon as data arrives, so the wait only
  matters on an idle topic; Tansu holds every fetch for the whole wait, so there it is latency added to
  every record of a quiet stream.
- A record reaches its agent's queue inline (``RecordHandoff``) instead of through mode's generic
  ``wait_first``, which starts four tasks per record and cancels three of them.
- The producer sends a micro-batch's outputs as one record batch per partition (``Producer.send_many``):
  they are all known at once, and a ``send`` each pays Faust's and aiokafka's per-record bookkeeping.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import defaultdict

from faust.transport.drivers import aiokafka as faust_aiokafka
from mode.services import WaitResults


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport):
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads this when it builds its fetcher in start(), which has not happened yet.
        consumer._fetch_max_wait_ms = getattr(self.app, "fetch_max_wait_ms", consumer._fetch_max_wait_ms)
        return consumer


class RecordHandoff:
    """Runs the hand-off of one record inline; ``interrupt`` cancels a hand-off that is waiting.

    Faust's consumer delivers every record as ``wait_first(callback(record), suspend_flow.wait())``: the
    callback (a put into the agent's queue, which waits only when the queue is full) runs until it is done
    or until flow is suspended for a rebalance, whichever comes first. mode's generic ``wait_first`` does
    that with a task for each argument and for the service's stopped and crashed events; the hand-off is on
    every record's path, so here the callback runs in the consumer's own task instead, and an interruption
    cancels that task and is absorbed again, the way ``asyncio.timeout`` absorbs its own cancellation
    (``Task.uncancel``).
    """

    def __init__(self) -> None:
        self._task: asyncio.Task | None = None
        self._interrupted = False

    async def run(self, callback) -> bool:
        """Await ``callback``; False if ``interrupt`` cancelled it first."""
        self._task, self._interrupted = asyncio.current_task(), False
        try:
            await callback
        except asyncio.CancelledError:
            if self._interrupted and self._task.uncancel() == 0:
                return False
            raise  # (also) cancelled from elsewhere: the consumer is stopping
        finally:
            self._task = None
        return True

    def interrupt(self) -> None:
        if self._task is not None and not self._interrupted:
            self._interrupted = True
            self._task.cancel()


class Consumer(faust_aiokafka.Consumer):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.handoff = RecordHandoff()
        self.commit_ok_at = 0.0  # monotonic time of the last offset commit that succeeded, and that failed
        self.commit_failed_at = 0.0

    async def _commit(self, offsets) -> bool:
        """Faust's commit (it logs and crashes the app on errors itself), with its outcome kept for readiness."""
        committed = await super()._commit(offsets)
        if committed:
            self.commit_ok_at = time.monotonic()
        elif offsets:
            self.commit_failed_at = time.monotonic()
        return committed

    def commit_health(self) -> tuple[bool, str]:
        if self.commit_failed_at > self.commit_ok_at:
            return False, "the last offset commit failed"
        return True, "offset commits succeed" if self.commit_ok_at else "nothing committed yet"

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def wait_first(self, *coros, timeout=None) -> WaitResults:
        """Faust's only call on a consumer is ``wait_first(callback(record), suspend_flow.wait())``, once per
        record (faust/transport/consumer.py, ``_drain_messages``); ``stop_flow`` interrupts it."""
        if len(coros) != 2 or timeout is not None:
            return await super().wait_first(*coros, timeout=timeout)
        callback, flow_suspended = coros
        flow_suspended.close()
        if self.suspend_flow.is_set() or self.should_stop:
            callback.close()
            return WaitResults([], [], True)
        if await self.handoff.run(callback):
            return WaitResults([callback], [None], False)
        return WaitResults([], [], True)

    def stop_flow(self) -> None:
        super().stop_flow()
        self.handoff.interrupt()


class Producer(faust_aiokafka.Producer):
    partition_cache = 1 << 18  # keys whose partition is kept: the worker scores the same posts again and again

    @functools.cached_property
    def _partition_of(self):
        """The producer's partitioner per (key, partitions), cached: aiokafka's murmur2 is pure Python."""
        return functools.lru_cache(maxsize=self.partition_cache)(
            lambda key, partitions: self.partitioner(key, partitions, partitions))

    async def partitioner_for(self, topic: str):
        """key -> the partition a keyed ``send`` to ``topic`` puts it in, for the topic's current partitions."""
        partitions = tuple(sorted(await self._ensure_producer().partitions_for(topic)))
        partition_of = self._partition_of
        return lambda key: partition_of(key, partitions)

    async def send_many(self, topic: str, records: list[tuple[bytes, bytes]]) -> list[asyncio.Future]:
        """Queue keyed records; returns one delivery future per record batch."""
        producer = self._ensure_producer()
        partitions = tuple(sorted(await producer.partitions_for(topic)))
        by_partition: dict[int, list[tuple[bytes, bytes]]] = defaultdict(list)
        partition_of = self._partition_of
        for key, value in records:
            by_partition[partition_of(key, partitions)].append((key, value))
        futures = []
        for partition, items in by_partition.items():
            batch = producer.create_batch()
            for key, value in items:
                if batch.append(key=key, value=value, timestamp=None) is None:  # full: send it, start another
                    futures.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                    if batch.append(key=key, value=value, timestamp=None) is None:
                        raise ValueError(f"a record of {len(value)} bytes does not fit an empty batch for {topic}")
            futures.append(await producer.send_batch(batch, topic, partition=partition))
        return futures


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer
    Producer = Producer
