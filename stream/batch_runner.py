"""What an agent does with a micro-batch that fails: it never acknowledges what was not processed.

- A transient error (Redis, the broker or Triton unreachable, timing out, loading, out of memory, or fewer
  replicas than ``redis.replica_acks`` confirming the batch's writes: ``replication.py``) retries the
  whole batch with exponential backoff and jitter. Redis state is idempotent and a redelivered snapshot whose
  post has no prediction as of it is scored again, so a retry repeats nothing visible but duplicates of
  predictions. The outage may last ``outage_budget_s``; after that the runner raises ``OutageTooLong`` and the
  agent stops the worker without acknowledging the batch (it is redelivered to whoever takes the partition).
- Any other error (a bug, or a record the code cannot handle) retries the batch ``attempts`` times, then
  splits it in halves and processes each half the same way, so the records that still fail alone are found in
  O(log n) steps. Such a record goes to the dead-letter topic with reason ``processing_failed`` and the
  exception; the others are processed. One record can therefore never block a partition.
- The worker is asked to stop (SIGTERM) while a batch is failing: the retries end at the next attempt, the runner
  raises ``StoppedWhileFailing`` and the agent exits the process without acknowledging the batch (Faust's
  graceful stop would wait for that batch for as long as the outage lasts, until the supervisor's kill).
While a batch fails, the agent's health check says so (``/readyz`` is not ready). ``run_agent`` is an agent's
loop around the runner.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import redis.exceptions as redis_errors
from aiokafka import errors as kafka_errors
from tenacity import (AsyncRetrying, RetryCallState, retry_if_exception, stop_after_delay, stop_any,
                      wait_exponential_jitter)

from popscore.serving.predictor import ModelUnavailable
from popscore.stream.health import Health
from popscore.stream.faust_ext.micro_batches import take_batches
from popscore.stream.replication import ReplicasBehind

if TYPE_CHECKING:
    from popscore.stream.worker import StreamWorker

log = logging.getLogger(__name__)

# Redis answers these while it cannot serve for now (loading its AOF, out of memory, a replica or cluster in
# transition); everything else it answers is about the command and will not change on a retry.
TRANSIENT_REDIS_REPLIES = ("LOADING", "OOM", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "BUSY", "NOREPLICAS")
# What redis-py's cluster client raises while slots move or a primary fails over: the redirections it could not
# settle within its own few retries (TRYAGAIN while a multi-key call's keys are split between the migrating
# nodes, ASK/MOVED, "TTL exhausted"), a slot no node serves yet, a cluster that is down until a failover ends.
TRANSIENT_CLUSTER_ERRORS = (redis_errors.TryAgainError, redis_errors.AskError, redis_errors.ClusterError,
                            redis_errors.SlotNotCoveredError)
PERMANENT_KAFKA_ERRORS = (kafka_errors.MessageSizeTooLargeError, kafka_errors.RecordTooLargeError,
                          kafka_errors.InvalidMessageError, kafka_errors.UnsupportedVersionError,
                          kafka_errors.TopicAuthorizationFailedError)


def is_transient(exc: BaseException) -> bool:
    """Will the same batch probably succeed later, once a service is back? (Concurrent lanes fail together, as
    an exception group: transient if any of theirs is.)"""
    if isinstance(exc, BaseExceptionGroup):
        return any(is_transient(inner) for inner in exc.exceptions)
    if isinstance(exc, TRANSIENT_CLUSTER_ERRORS + (ReplicasBehind,)):
        return True
    if isinstance(exc, redis_errors.ResponseError):
        return _reply(exc).startswith(TRANSIENT_REDIS_REPLIES)
    if isinstance(exc, (redis_errors.ConnectionError, redis_errors.TimeoutError)):
        return True
    if isinstance(exc, kafka_errors.KafkaError):
        return not isinstance(exc, PERMANENT_KAFKA_ERRORS)
    return isinstance(exc, (ModelUnavailable, ConnectionError, TimeoutError, OSError))


def _reply(exc: redis_errors.ResponseError) -> str:
    """The error reply's code (redis-py parses the codes it knows into ``status_code``), else its text, without
    the failing command a pipeline puts before it."""
    if exc.status_code:
        return exc.status_code
    return str(exc).partition(PIPELINE_ERROR)[2] or str(exc)


PIPELINE_ERROR = " of pipeline caused error: "  # redis-py's annotation of a pipeline's failing command


class OutageTooLong(RuntimeError):
    """A transient error outlasted the outage budget: the worker stops rather than acknowledge the batch."""


class StoppedWhileFailing(RuntimeError):
    """The worker was asked to stop while a batch was failing: it exits without acknowledging the batch."""


class BatchRunner:
    def __init__(self, name: str, handle: Callable[[list], Awaitable[None]],
                 dead_letter: Callable[[object, BaseException], Awaitable[None]], health: Health, metrics, *,
                 attempts: int = 2, outage_budget_s: float = 120.0, max_backoff_s: float = 5.0,
                 stopping: Callable[[], bool] = lambda: False) -> None:
        self.name = name  # the agent's topic
        self.handle = handle
        self.dead_letter = dead_letter  # (message, exception): delivered when it returns
        self.health = health
        self.metrics = metrics
        self.attempts = attempts
        self.outage_budget_s = outage_budget_s
        self.max_backoff_s = max_backoff_s
        self.stopping = stopping  # the worker is being stopped: no further attempt
        self.check = f"agent:{name}"

    async def run(self, messages: list) -> None:
        """Process ``messages`` completely (outputs delivered, failures dead-lettered) or raise
        ``OutageTooLong``; only then may the caller acknowledge them."""
        await self._process(messages)
        self.health.set(self.check, True, "processing")

    async def _process(self, messages: list) -> None:
        error = await self._attempt(self.handle, messages)
        if error is None:
            return
        if len(messages) > 1:
            half = len(messages) // 2
            await self._process(messages[:half])
            await self._process(messages[half:])
            return
        log.error("%s: record at partition %s offset %s fails alone (%r); dead-lettered", self.name,
                  messages[0].partition, messages[0].offset, error)
        async def dead_letter(batch: list) -> None:
            await self.dead_letter(batch[0], error)

        if await self._attempt(dead_letter, messages) is not None:
            raise RuntimeError(f"{self.name}: cannot dead-letter a record that fails alone") from error

    async def _attempt(self, call: Callable[[list], Awaitable[None]], messages: list) -> BaseException | None:
        """Run ``call(messages)`` with the retries; None on success, the error that still fails otherwise.
        Raises ``OutageTooLong`` when transient errors outlast the budget, ``StoppedWhileFailing`` when the worker
        is stopping (then a record is neither split off nor dead-lettered on fewer attempts than usual)."""
        try:  # the usual case, without the retry machinery
            await call(messages)
            return None
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed(messages, exc, 1)
            failures = 0 if is_transient(exc) else 1
            if failures >= self.attempts:
                return exc

        def retry(exc: BaseException) -> bool:
            nonlocal failures
            if is_transient(exc):
                return True
            failures += 1
            return failures < self.attempts

        def before_sleep(state: RetryCallState) -> None:
            self._failed(messages, state.outcome.exception(), state.attempt_number + 1)

        retrying = AsyncRetrying(retry=retry_if_exception(retry), reraise=True, before_sleep=before_sleep,
                                 wait=wait_exponential_jitter(multiplier=0.05, jitter=0.05, max=self.max_backoff_s),
                                 stop=stop_any(stop_after_delay(self.outage_budget_s), lambda _: self.stopping()))
        try:
            await retrying(call, messages)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self.stopping():
                raise StoppedWhileFailing(f"{self.name}: asked to stop while a batch of {len(messages)} records "
                                          f"was failing ({exc!r}); not acknowledged") from exc
            self.metrics.batch_failures.labels(self.name, "transient" if is_transient(exc) else "error").inc()
            if is_transient(exc):
                self.health.set(self.check, False, f"outage longer than {self.outage_budget_s:g}s: {exc!r}")
                raise OutageTooLong(f"{self.name}: {exc!r} for longer than {self.outage_budget_s:g}s") from exc
            return exc
        return None

    def _failed(self, messages: list, exc: BaseException, attempt: int) -> None:
        kind = "transient" if is_transient(exc) else "error"
        self.metrics.batch_failures.labels(self.name, kind).inc()
        self.health.set(self.check, False, f"a batch of {len(messages)} records failed ({exc!r}); retrying")
        log.warning("%s: a batch of %d records failed (%s, attempt %d): %r", self.name, len(messages), kind,
                    attempt, exc)


async def run_agent(stream, topic: str, handle: Callable[[list], Awaitable[None]], worker: StreamWorker,
                    stopping: Callable[[], bool] = lambda: False) -> None:
    """An agent's loop: once the worker has started, each micro-batch through a ``BatchRunner``; its health
    check says whether it runs. ``stopping``: whether the app is being stopped."""
    settings = worker.settings.worker
    runner = BatchRunner(topic, handle, worker.decode.dead_letter_failure, worker.health, worker.metrics,
                         attempts=settings.batch_attempts, outage_budget_s=settings.outage_budget_s,
                         max_backoff_s=settings.retry_max_backoff_s,
                         stopping=stopping)
    try:
        await worker.start_when_possible()
        worker.health.set(runner.check, True, "running")
        async for events in take_batches(stream, settings.batch_size, within=settings.batch_within_s):
            await runner.run([event.message for event in events])
    except OutageTooLong as exc:
        stop_worker(str(exc))
    except StoppedWhileFailing as exc:
        stop_worker(str(exc), code=STOPPED_WHILE_FAILING)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        worker.metrics.agent_crashes.labels(topic).inc()
        worker.health.set(runner.check, False, f"crashed: {exc!r}")
        raise
    finally:
        if worker.health.ok(runner.check):
            worker.health.set(runner.check, False, "stopped")


STOPPED_WHILE_FAILING = 143  # as if SIGTERM had ended the process: it was asked to stop, and did not finish a batch


def stop_worker(reason: str, code: int = 3) -> None:
    """Exit at once with ``code``, acknowledging nothing more: the batch in hand is redelivered to whoever takes the
    partition. (A graceful Faust shutdown would wait for that batch to be acknowledged, for ever.)"""
    log.critical("stopping the worker: %s", reason)
    print(f"popscore worker stopped: {reason}", file=sys.stderr, flush=True)
    logging.shutdown()
    os._exit(code)
