"""Which Triton errors ModelPredictor retries: every gRPC status code raised by a fake client. Transient ones
(``RETRYABLE_STATUSES``) are retried up to ``serving.retries`` with jittered waits; a bad request is sent once and
served by the local runtime; the breaker counts each failed request once, after its retries."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from tritonclient.utils import InferenceServerException

from popscore.serving.circuit_breaker import BreakerState
from popscore.serving.predictor import RETRYABLE_STATUSES, retryable
from tests.unit.test_predictor_faults import Clock, FakeTriton, batch, check_outputs, predictor

RETRIES, BACKOFF_S, MAX_BACKOFF_S = 4, 0.1, 0.3
FAILING = [code for code in grpc.StatusCode if code not in (grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED)]


class FailingTriton(FakeTriton):
    """Fails every call with one gRPC status, as tritonclient reports it."""

    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__()
        self.code = code

    async def infer(self, model_name, inputs, **kwargs):
        self.calls += 1
        raise InferenceServerException(f"failed: {self.code.name}", status=str(self.code))


def retrying_predictor(triton, **serving):
    p = predictor(triton, Clock(), retries=RETRIES, backoff_s=BACKOFF_S, max_backoff_s=MAX_BACKOFF_S,
                  breaker_failures=100, **serving)
    waits: list[float] = []

    async def record_wait(seconds: float) -> None:  # the waits are recorded, not slept
        waits.append(seconds)

    p.retry_sleep = record_wait
    return p, waits


def test_only_unavailable_and_resource_exhausted_are_retryable():
    assert RETRYABLE_STATUSES == {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert [code for code in FAILING if retryable(InferenceServerException("x", status=str(code)))] == \
        [grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE]
    assert not retryable(InferenceServerException("no status"))
    assert not retryable(TimeoutError())


@pytest.mark.parametrize("code", FAILING, ids=lambda code: code.name)
def test_each_status_code_is_retried_up_to_the_limit_or_not_at_all(code):
    async def run():
        triton = FailingTriton(code)
        p, waits = retrying_predictor(triton)
        results = await p.infer(batch(2))
        assert [r.served_by for r in results] == ["local"]  # the local runtime serves it either way
        check_outputs(results, 2)
        if code in RETRYABLE_STATUSES:
            assert triton.calls == RETRIES + 1 and len(waits) == RETRIES
            for n, wait in enumerate(waits, start=1):  # full jitter: anywhere up to the exponential bound
                assert 0 <= wait <= min(MAX_BACKOFF_S, BACKOFF_S * 2 ** (n - 1))
        else:
            assert triton.calls == 1 and waits == []
        assert p.stats["triton_errors"] == triton.calls
        assert p.breaker.state is BreakerState.CLOSED and p.stats["triton_timeouts"] == 0

    asyncio.run(run())


def test_the_waits_are_jittered():
    async def run():
        p, waits = retrying_predictor(FailingTriton(grpc.StatusCode.UNAVAILABLE))
        for _ in range(10):
            await p.infer(batch(2))
        return waits

    waits = asyncio.run(run())
    first_waits = waits[::RETRIES]
    assert len(first_waits) == 10 and len(set(first_waits)) == 10  # random, not a fixed schedule
    assert max(waits) > BACKOFF_S  # later retries may wait longer than the first one can


@pytest.mark.parametrize("code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                                  grpc.StatusCode.UNAVAILABLE], ids=lambda code: code.name)
def test_failed_requests_still_open_the_circuit_after_breaker_failures(code):
    async def run():
        triton = FailingTriton(code)
        p, _ = retrying_predictor(triton)
        p.breaker.failure_threshold = 2
        await p.infer(batch(2))
        assert p.triton_healthy
        await p.infer(batch(2))
        assert not p.triton_healthy
        calls = triton.calls
        assert [r.served_by for r in await p.infer(batch(2))] == ["local"] and triton.calls == calls  # open

    asyncio.run(run())


def test_without_the_local_fallback_a_bad_request_is_not_retried_and_raises():
    from popscore.serving.predictor import ModelUnavailable

    async def run():
        triton = FailingTriton(grpc.StatusCode.INVALID_ARGUMENT)
        p, waits = retrying_predictor(triton, local_fallback=False)
        with pytest.raises(ModelUnavailable):
            await p.infer(batch(2))
        assert triton.calls == 1 and waits == [] and p.local.calls == 0

    asyncio.run(run())
