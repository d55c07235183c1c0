"""BatchRunner: transient errors retry the whole batch, other errors isolate the records that fail alone (and
only those are dead-lettered), an outage past its budget raises, and readiness says a batch is failing."""

import asyncio
from dataclasses import dataclass

import pytest
import redis.exceptions as redis_errors
from redis._parsers.base import BaseParser
from aiokafka import errors as kafka_errors

from popscore.serving.predictor import ModelUnavailable
from popscore.stream.batch_runner import BatchRunner, OutageTooLong, is_transient
from popscore.stream.health import Health
from popscore.stream.metrics import WorkerMetrics


@dataclass(frozen=True)
class Message:
    offset: int
    poison: bool = False
    partition: int = 0


class Sink:
    """A handler that processes what it is given (idempotently), failing as it is told."""

    def __init__(self, transient_failures: int = 0, transient=redis_errors.ConnectionError("down")) -> None:
        self.processed: set[int] = set()
        self.calls: list[list[int]] = []
        self.transient_failures = transient_failures
        self.transient = transient
        self.dead: list[tuple[int, str]] = []

    async def handle(self, messages):
        self.calls.append([m.offset for m in messages])
        if self.transient_failures:
            self.transient_failures -= 1
            raise self.transient
        if any(m.poison for m in messages):
            raise ValueError("cannot handle this record")
        self.processed.update(m.offset for m in messages)

    async def dead_letter(self, message, exc):
        self.dead.append((message.offset, repr(exc)))


def runner(sink: Sink, health: Health, **kwargs) -> BatchRunner:
    return BatchRunner("snapshots", sink.handle, sink.dead_letter, health, WorkerMetrics(), max_backoff_s=0.01,
                       **kwargs)


def test_a_transient_error_retries_the_whole_batch_and_readiness_shows_it_meanwhile():
    sink, health = Sink(transient_failures=3), Health(("agent:snapshots",))
    seen_unready = []

    async def watch():
        while not sink.processed:
            seen_unready.append(not health.ok("agent:snapshots"))
            await asyncio.sleep(0.001)

    async def main():
        watcher = asyncio.ensure_future(watch())
        await runner(sink, health).run([Message(i) for i in range(10)])
        await watcher

    asyncio.run(main())
    assert sink.processed == set(range(10)) and not sink.dead
    assert len(sink.calls) == 4 and all(call == list(range(10)) for call in sink.calls)
    assert any(seen_unready) and health.ok("agent:snapshots")


def test_records_that_fail_alone_are_dead_lettered_and_the_others_processed():
    sink = Sink()
    batch = [Message(i, poison=i in (3, 7)) for i in range(16)]
    asyncio.run(runner(sink, Health(("agent:snapshots",)), attempts=2).run(batch))
    assert sink.processed == set(range(16)) - {3, 7}
    assert [offset for offset, _ in sink.dead] == [3, 7]
    assert all("cannot handle this record" in detail for _, detail in sink.dead)
    assert len(sink.calls) < 2 * 16  # halves, not one call per record


def test_an_outage_longer_than_the_budget_raises_without_processing():
    sink = Sink(transient_failures=10**9)
    health = Health(("agent:snapshots",))
    with pytest.raises(OutageTooLong):
        asyncio.run(runner(sink, health, outage_budget_s=0.2).run([Message(1)]))
    assert not sink.processed and not sink.dead
    assert not health.ok("agent:snapshots")


@pytest.mark.parametrize("exc, transient", [
    (redis_errors.ConnectionError("refused"), True),
    (redis_errors.TimeoutError("slow"), True),
    (redis_errors.BusyLoadingError("LOADING Redis is loading the dataset in memory"), True),
    (redis_errors.ResponseError("OOM command not allowed when used memory > 'maxmemory'"), True),
    (redis_errors.ResponseError("ERR Error running script: bad argument"), False),
    (kafka_errors.KafkaTimeoutError(), True),
    (kafka_errors.KafkaConnectionError(), True),
    (kafka_errors.MessageSizeTooLargeError(), False),
    (ModelUnavailable("triton down, fallback off"), True),
    (ConnectionResetError(), True),
    (ValueError("bug"), False),
    (ExceptionGroup("lanes", [ValueError("bug"), redis_errors.ConnectionError("refused")]), True),
    (ExceptionGroup("lanes", [ValueError("bug")]), False),
    (KeyError("bug"), False),
])
def test_which_errors_are_transient(exc, transient):
    assert is_transient(exc) is transient


def pipeline_error(reply: str) -> Exception:
    """An error reply as redis-py raises it from a pipeline: its code parsed off (into ``status_code``) and the
    message prefixed with the failing command."""
    exc = BaseParser.parse_error(reply)
    exc.args = (f"Command # 1 (EVALSHA abc 2 k1 k2) of pipeline caused error: {exc.args[0]}",) + exc.args[1:]
    return exc


@pytest.mark.parametrize("reply, transient", [
    ("OOM command not allowed when used memory > 'maxmemory'.", True),
    ("TRYAGAIN Multiple keys request during rehashing of slot", True),
    ("ASK 3999 127.0.0.1:7002", True),
    ("MOVED 3999 127.0.0.1:7002", True),
    ("CLUSTERDOWN The cluster is down", True),
    ("MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.", True),
    ("BUSY Redis is busy running a script.", True),
    ("CROSSSLOT Keys in request don't hash to the same slot", False),  # a key layout bug: no retry mends it
    ("ERR Error running script (call to f_abc): @user_script:12: bad argument", False),
])
def test_redis_replies_as_the_client_raises_them_are_told_apart(reply, transient):
    assert is_transient(pipeline_error(reply)) is transient


def test_what_the_cluster_client_raises_when_its_own_retries_ran_out_is_transient():
    assert is_transient(redis_errors.ClusterError("TTL exhausted."))
    assert is_transient(redis_errors.SlotNotCoveredError("slot 3999 is not covered"))


def test_a_stop_ends_the_retries_without_processing_splitting_or_dead_lettering():
    from popscore.stream.batch_runner import StoppedWhileFailing

    stop = asyncio.Event()
    sink, health = Sink(transient_failures=10_000), Health(("agent:snapshots",))
    run = runner(sink, health, outage_budget_s=60.0, stopping=stop.is_set)

    async def scenario():
        task = asyncio.create_task(run.run([Message(0), Message(1), Message(2)]))
        while len(sink.calls) < 3:  # retrying
            await asyncio.sleep(0.001)
        stop.set()
        with pytest.raises(StoppedWhileFailing, match="not acknowledged"):
            await asyncio.wait_for(task, 5.0)

    asyncio.run(scenario())
    assert not sink.processed and not sink.dead
    assert all(call == [0, 1, 2] for call in sink.calls)  # the whole batch each time: never split
    assert not health.ok("agent:snapshots")

    poisoned = Sink(transient_failures=0)  # an error that is not transient, while stopping: no dead letter
    stopped = runner(poisoned, Health(("agent:snapshots",)), stopping=lambda: True)
    with pytest.raises(StoppedWhileFailing):
        asyncio.run(stopped.run([Message(0), Message(1, poison=True)]))
    assert not poisoned.dead
