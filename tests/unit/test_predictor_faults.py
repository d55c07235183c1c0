"""ModelPredictor against a Triton that fails: frozen, briefly unavailable, or cancelled mid-call.

A fake asynchronous Triton client and a fake local runtime stand in for the real ones; the breaker runs
on a fake clock, so "until the reset time" needs no waiting.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from popscore.serving.circuit_breaker import BreakerState, CircuitBreaker
from popscore.serving.model_repository import RepositoryModel
from popscore.serving.predictor import ModelPredictor, ModelUnavailable, deadline_exceeded
from popscore.settings import ServingSettings

TIMEOUT_S = 0.2
RESET_S = 5.0


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Result:
    def __init__(self, x: np.ndarray) -> None:
        self.x = x

    def as_numpy(self, name: str) -> np.ndarray:
        return self.x * 2


class FakeTriton:
    """``infer`` as tritonclient.grpc.aio has it; ``mode`` says how it answers."""

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.calls = 0
        self.called = asyncio.Event()

    async def infer(self, model_name, inputs, model_version=None, outputs=None, client_timeout=None):
        self.calls += 1
        self.called.set()
        mode = self.mode
        if mode == "unavailable-once":
            self.mode = "ok"
            raise InferenceServerException("failed to connect to all addresses", status="StatusCode.UNAVAILABLE")
        if mode == "unavailable":
            raise InferenceServerException("failed to connect to all addresses", status="StatusCode.UNAVAILABLE")
        if mode == "frozen":  # TCP connects, no answer: gRPC ends the call at its deadline
            await asyncio.sleep(client_timeout)
            raise InferenceServerException("Deadline Exceeded", status="StatusCode.DEADLINE_EXCEEDED")
        if mode == "hang":  # a call that ignores its deadline: only the predictor's own guard ends it
            await asyncio.Event().wait()
        await asyncio.sleep(0)  # a real answer comes back over the network: other tasks run meanwhile
        return Result(_numpy(inputs[0]))


def _numpy(tensor) -> np.ndarray:
    return np.frombuffer(tensor._raw_content, dtype=np.float32).reshape(tensor.shape())


class FakeLocal:
    version = 7

    def __init__(self) -> None:
        self.calls = 0

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        return {"y": inputs["x"] * 2}


def predictor(triton: FakeTriton, clock: Clock, **serving) -> ModelPredictor:
    settings = ServingSettings(**{"timeout_s": TIMEOUT_S, "retries": 1, "backoff_s": 0.01, "breaker_failures": 3,
                                  "breaker_reset_s": RESET_S, **serving})
    p = ModelPredictor("m", settings, "127.0.0.1:1", Path("unused"))
    config = model_config_pb2.ModelConfig(name="m", max_batch_size=2)
    config.input.add(name="x", data_type=model_config_pb2.TYPE_FP32, dims=[1])
    config.output.add(name="y", data_type=model_config_pb2.TYPE_FP32, dims=[1])
    p.model = RepositoryModel("m", config, (7,), Path("unused"))
    p.version, p.local, p.client = 7, FakeLocal(), triton
    p.breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_reset_s, clock=clock)
    return p


def batch(rows: int = 6) -> dict[str, np.ndarray]:
    return {"x": np.arange(rows, dtype=np.float32).reshape(rows, 1)}


def check_outputs(results, rows: int = 6) -> None:
    np.testing.assert_array_equal(np.concatenate([r.outputs["y"] for r in results]), batch(rows)["x"] * 2)
    assert all(r.model_version == "7" for r in results)


@pytest.mark.parametrize("mode", ["frozen", "hang"])
def test_a_frozen_triton_costs_one_deadline_then_the_calls_go_local_until_the_reset_time(mode):
    async def run():
        clock, triton = Clock(), FakeTriton(mode)
        p = predictor(triton, clock)
        started = time.monotonic()
        results = await p.infer(batch())  # three chunks of two rows, all waiting at once
        elapsed = time.monotonic() - started
        assert [r.served_by for r in results] == ["local"] * 3
        check_outputs(results)
        assert triton.calls == 3  # one call per chunk: a missed deadline is not retried
        assert TIMEOUT_S <= elapsed < 2 * TIMEOUT_S + 0.25  # about one deadline for the whole batch
        assert p.breaker.state is BreakerState.OPEN and not p.triton_healthy
        assert p.stats["triton_timeouts"] == 3

        for _ in range(3):  # open: local at once, Triton not called
            assert [r.served_by for r in await p.infer(batch())] == ["local"] * 3
        assert triton.calls == 3

        clock.now = RESET_S  # half-open: one chunk is the trial, the others stay local
        triton.mode = "ok"
        results = await p.infer(batch())
        assert sorted(r.served_by for r in results) == ["local", "local", "triton"]
        check_outputs(results)
        assert triton.calls == 4 and p.triton_healthy
        assert [r.served_by for r in await p.infer(batch())] == ["triton"] * 3

    asyncio.run(run())


def test_a_quick_unavailable_error_is_retried():
    async def run():
        triton = FakeTriton("unavailable-once")
        p = predictor(triton, Clock())
        results = await p.infer(batch(2))
        assert [r.served_by for r in results] == ["triton"] and triton.calls == 2
        check_outputs(results, 2)
        assert p.triton_healthy and p.stats["triton_errors"] == 1

    asyncio.run(run())


def test_quick_errors_open_the_circuit_only_after_breaker_failures_calls():
    async def run():
        triton = FakeTriton("unavailable")
        p = predictor(triton, Clock())
        for n in range(1, 4):
            assert [r.served_by for r in await p.infer(batch(2))] == ["local"]
            assert triton.calls == 2 * n  # every call retried once
            assert p.triton_healthy == (n < 3)
        await p.infer(batch(2))
        assert triton.calls == 6

    asyncio.run(run())


def test_a_retry_is_dropped_when_another_chunk_has_opened_the_circuit_meanwhile():
    class Mixed(FakeTriton):
        async def infer(self, model_name, inputs, **kwargs):
            self.calls += 1
            if _numpy(inputs[0])[0, 0] == 0:  # first chunk: refused, and retried after the backoff
                self.called.set()
                raise InferenceServerException("connection refused", status="StatusCode.UNAVAILABLE")
            await self.called.wait()  # second chunk: misses its deadline while the first backs off
            raise InferenceServerException("Deadline Exceeded", status="StatusCode.DEADLINE_EXCEEDED")

    async def run():
        triton = Mixed()
        p = predictor(triton, Clock(), backoff_s=0.05)
        results = await p.infer(batch(4))
        assert [r.served_by for r in results] == ["local", "local"]
        assert triton.calls == 2  # the first chunk's retry was not sent into an open circuit

    asyncio.run(run())


def test_a_cancelled_trial_gives_its_slot_back():
    async def run():
        clock, triton = Clock(), FakeTriton("hang")
        p = predictor(triton, clock, timeout_s=60)
        p.breaker.trip()
        clock.now = RESET_S
        task = asyncio.create_task(p.infer(batch(2)))
        await triton.called.wait()  # the trial call is in flight at Triton ...
        assert p.breaker.trial_in_flight
        task.cancel()  # ... when the worker cancels it (a sibling task failed)
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not p.breaker.trial_in_flight
        triton.mode = "ok"
        results = await p.infer(batch(2))  # the next call is a trial again, and closes the circuit
        assert [r.served_by for r in results] == ["triton"] and triton.calls == 2
        assert p.breaker.state is BreakerState.CLOSED

    asyncio.run(run())


def test_without_the_local_fallback_a_frozen_triton_raises_model_unavailable():
    async def run():
        triton = FakeTriton("frozen")
        p = predictor(triton, Clock(), local_fallback=False)
        with pytest.raises(ModelUnavailable):
            await p.infer(batch(2))
        with pytest.raises(ModelUnavailable):  # open circuit: fails at once, Triton not called
            await p.infer(batch(2))
        assert triton.calls == 1 and p.local.calls == 0

    asyncio.run(run())


def test_deadline_exceeded_is_told_apart_from_quick_errors():
    import grpc

    assert deadline_exceeded(asyncio.TimeoutError())
    assert deadline_exceeded(InferenceServerException("Deadline Exceeded", status="StatusCode.DEADLINE_EXCEEDED"))
    assert not deadline_exceeded(InferenceServerException("refused", status="StatusCode.UNAVAILABLE"))
    assert not deadline_exceeded(InferenceServerException("no status"))
    assert not deadline_exceeded(ModelUnavailable("short output"))

    class RpcError(grpc.RpcError):
        def __init__(self, code):
            self._code = code

        def code(self):
            return self._code

    assert deadline_exceeded(RpcError(grpc.StatusCode.DEADLINE_EXCEEDED))
    assert not deadline_exceeded(RpcError(grpc.StatusCode.UNAVAILABLE))
