"""One served model: Triton first, ONNX Runtime on the same file when Triton cannot answer.

Triton calls carry a deadline and go through a circuit breaker so that a dead Triton costs one fast
local inference instead of a timeout per batch. Only errors a second try can cure are retried
(``RETRYABLE_STATUSES``: Triton unreachable or shedding load), with jittered exponential waits so that the
worker's concurrent chunks do not come back in step. A bad request (invalid argument, model not found, ...)
would fail the same way again: it goes to the local runtime at once. A missed deadline is not retried
either, and opens the circuit at once: a server that let the whole deadline pass (frozen, overloaded) will do
it again, and every retry, or every further failure needed to open the circuit, would cost another deadline
per batch. Every result names the model
version that produced it and whether Triton or the local runtime served it. ``refresh`` picks up a
version promoted into the model repository through Triton's explicit model-control API: check its metadata,
load, check readiness, then switch; if any of it fails the old version keeps serving. A model set whose halves
must switch together uses ``prepare`` and ``switch`` instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

import grpc
import numpy as np
import tenacity
import tritonclient.grpc.aio as grpcaio
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from popscore.serving.circuit_breaker import BreakerState, CircuitBreaker
from popscore.serving.local_runtime import LocalOnnxRuntime
from popscore.serving.model_repository import RepositoryModel, build_python_backend_repository, list_models, \
    version_metadata
from popscore.settings import ServingSettings

log = logging.getLogger(__name__)

TRITON_DTYPES = {model_config_pb2.TYPE_FP32: "FP32", model_config_pb2.TYPE_INT64: "INT64"}
# The gRPC deadline ends a call to a frozen server; this guard on top of it ends a call whose client never
# gives up (a connection that hangs before the deadline is armed, a client that ignores it).
DEADLINE_GUARD_S = 0.25
RETRYABLE_STATUSES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
"""Triton unreachable (refused, reset, restarting) or out of capacity (its queue full): transient. Every other
status is the same again on a retry, and a missed deadline has its own handling (``deadline_exceeded``)."""


@dataclass(frozen=True)
class Inference:
    outputs: dict[str, np.ndarray]
    model_version: str
    served_by: str  # "triton" or "local"


class ModelUnavailable(RuntimeError):
    pass


class CircuitOpened(RuntimeError):
    """Raised in place of a retry: the circuit opened while the retry waited."""


class ModelPredictor:
    def __init__(self, name: str, settings: ServingSettings, grpc_url: str, repository: Path,
                 python_backend_mirror: Path | None = None, timeout_s: float | None = None,
                 check_version: Callable[[int, dict], str | None] | None = None) -> None:
        self.name = name
        # (version, its metadata.json) -> why that version must not be served (None: it may). A refresh never
        # switches to a refused version; the caller checks the version ``start`` picked.
        self.check_version = check_version
        self.settings = settings
        self.timeout_s = timeout_s or settings.timeout_s
        self.grpc_url = grpc_url
        self.repository = repository
        self.python_backend_mirror = python_backend_mirror
        self.breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_reset_s)
        # The wait before a retry; tests replace it to record the waits.
        self.retry_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
        self.client: grpcaio.InferenceServerClient | None = None
        self.model: RepositoryModel | None = None
        self.version: int | None = None
        self.local: LocalOnnxRuntime | None = None
        self.metadata: dict = {}  # the trainer's metadata.json of the served version (feature spec, metrics)
        self.stats = {"triton": 0, "local": 0, "triton_errors": 0, "triton_timeouts": 0, "reloads": 0,
                      "reload_failures": 0}

    async def start(self) -> None:
        """Create the asyncio client inside the running loop (they must not be shared across loops)."""
        self.client = grpcaio.InferenceServerClient(self.grpc_url)
        self.model = self._repository_model()
        self.version = self.model.versions[-1]
        self.metadata = version_metadata(self.model, self.version)
        self.local = LocalOnnxRuntime(self.model, self.version)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()

    def _repository_model(self) -> RepositoryModel:
        for model in list_models(self.repository):
            if model.name == self.name and model.versions:
                return model
        raise ModelUnavailable(f"model {self.name!r} has no version in {self.repository}")

    @property
    def max_batch_size(self) -> int:
        return max(1, self.model.config.max_batch_size)

    async def infer(self, inputs: dict[str, np.ndarray]) -> list[Inference]:
        """Run a batch of any size; split into chunks of the model's ``max_batch_size``."""
        n = len(next(iter(inputs.values())))
        step = self.max_batch_size
        chunks = [{k: v[i:i + step] for k, v in inputs.items()} for i in range(0, n, step)]
        return list(await asyncio.gather(*(self._infer_chunk(chunk) for chunk in chunks)))

    @property
    def triton_healthy(self) -> bool:
        """Is Triton serving this model (circuit closed)? False while the calls go to the local runtime."""
        return self.breaker.state is BreakerState.CLOSED

    async def _infer_chunk(self, inputs: dict[str, np.ndarray]) -> Inference:
        # The context gives a cancelled trial call's slot back (the worker cancels sibling tasks when one
        # fails); without it the circuit would never half-open again.
        with self.breaker.call() as allowed:
            if allowed:
                outputs = await self._triton_with_retries(inputs)
                if outputs is not None:
                    return Inference(outputs, str(self.version), "triton")
        if not self.settings.local_fallback:
            raise ModelUnavailable(f"Triton cannot serve {self.name} and the local fallback is off")
        self.stats["local"] += 1
        local = self.local
        outputs = await asyncio.to_thread(local.infer, inputs)
        return Inference(outputs, str(local.version), "local")

    async def _triton_with_retries(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """Triton's answer, or None once it has failed (recorded in the breaker)."""
        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception(retryable),
            stop=tenacity.stop_after_attempt(self.settings.retries + 1),
            wait=tenacity.wait_random_exponential(multiplier=self.settings.backoff_s,
                                                  max=self.settings.max_backoff_s),
            before_sleep=self._log_retry, sleep=self.retry_sleep, reraise=True)
        try:
            outputs = await retrying(self._triton_attempt, inputs)
        except CircuitOpened:
            return None
        except Exception as exc:  # any transport or server error: fall back
            if deadline_exceeded(exc):
                self.stats["triton_timeouts"] += 1
                self.breaker.trip()
                log.warning("triton %s missed its %.2fs deadline: circuit open, serving locally for %.0fs",
                            self.name, self.timeout_s, self.breaker.reset_after_s)
            else:
                self.breaker.record_failure()
                log.warning("triton %s failed (%s): %s", self.name,
                            "retries exhausted" if retryable(exc) else "not retried", exc)
            return None
        self.breaker.record_success()
        self.stats["triton"] += 1
        return outputs

    def _log_retry(self, retry_state: tenacity.RetryCallState) -> None:
        log.warning("triton %s attempt %d failed, retrying in %.3fs: %s", self.name, retry_state.attempt_number,
                    retry_state.upcoming_sleep, retry_state.outcome.exception())

    async def _triton_attempt(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One try; a retry is not sent once another call has opened the circuit during the wait before it."""
        if self.breaker.state is BreakerState.OPEN:
            raise CircuitOpened(self.name)
        try:
            return await self._triton(inputs)
        except Exception:
            self.stats["triton_errors"] += 1
            raise

    async def _triton(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tensors = []
        for spec in self.model.config.input:
            array = inputs[spec.name]
            tensor = InferInput(spec.name, list(array.shape), TRITON_DTYPES[spec.data_type])
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        outputs = [InferRequestedOutput(o.name) for o in self.model.config.output]
        async with asyncio.timeout(self.timeout_s + DEADLINE_GUARD_S):
            result = await self.client.infer(self.name, tensors, model_version=str(self.version), outputs=outputs,
                                             client_timeout=self.timeout_s)
        answer = {o.name: result.as_numpy(o.name) for o in self.model.config.output}
        n = len(next(iter(inputs.values())))
        for name, array in answer.items():
            if array is None or len(array) != n:  # the empty-output failure mode of a mismatched numpy
                raise ModelUnavailable(f"Triton returned no or a short {name!r} for {self.name}")
        return answer

    async def refresh(self, target: int | None = None) -> bool:
        """Serve a newer version from the repository (the newest, or ``target`` if it is there) if it passes
        ``check_version`` and Triton loads it; returns True if switched."""
        prepared = await self.prepare(target)
        if prepared is None:
            return False
        self.switch(prepared)
        return True

    def candidate(self, target: int | None = None) -> tuple[RepositoryModel, int] | None:
        """(repository model, version) a refresh would move to: the newest version, or ``target`` if the
        repository has it; None when that is the version served (or there is none)."""
        try:
            model = self._repository_model()
        except ModelUnavailable:
            return None
        newest = model.versions[-1] if target is None else target
        if newest == self.version or newest not in model.versions:
            return None
        return model, newest

    async def prepare(self, target: int | None = None) -> "PreparedVersion | None":
        """Load the candidate version (``candidate``) in Triton and wait until it is ready, without switching
        to it: a model set switches its halves together once all of them are prepared. None if there is no
        candidate or it failed (logged, counted in ``reload_failures``; the served version stays)."""
        found = self.candidate(target)
        if found is None:
            return None
        model, version = found
        try:
            metadata = version_metadata(model, version)
            problem = self.check_version(version, metadata) if self.check_version is not None else None
            if problem is not None:
                raise ModelUnavailable(f"version {version} is not servable: {problem}")
            await self.load_in_triton(version)
            local = LocalOnnxRuntime(model, version)
        except Exception as exc:
            self.stats["reload_failures"] += 1
            log.error("could not load %s version %s, still serving version %s: %s",
                      self.name, version, self.version, exc)
            return None
        return PreparedVersion(model, version, local, metadata)

    async def load_in_triton(self, version: int) -> None:
        """Ask Triton (explicit model control) to load the model and wait until ``version`` is ready."""
        if self.python_backend_mirror is not None:
            build_python_backend_repository(self.repository, self.python_backend_mirror, only=[self.name])
        await self.client.load_model(self.name, client_timeout=self.settings.load_timeout_s)
        deadline = time.monotonic() + self.settings.load_timeout_s
        while not await self.client.is_model_ready(self.name, str(version)):
            if time.monotonic() > deadline:
                raise ModelUnavailable(f"version {version} of {self.name} not ready after loading")
            await asyncio.sleep(0.2)

    async def ensure_loaded(self) -> bool:
        """Is the served version ready in Triton? If Triton answers that it is not (explicit model control: a
        model nobody loaded, or one unloaded since), ask it to load it. False, logged, when Triton does not
        answer or the load fails: the calls go to the local runtime meanwhile, and the next refresh asks again."""
        try:
            if await self.client.is_model_ready(self.name, str(self.version), client_timeout=self.settings.timeout_s):
                return True
            log.warning("%s version %s is not loaded in Triton: asking Triton to load it", self.name, self.version)
            await self.load_in_triton(self.version)
            log.info("Triton loaded %s version %s", self.name, self.version)
            return True
        except Exception as exc:
            log.error("%s version %s is not ready in Triton and could not be loaded (served locally until it "
                      "is): %s", self.name, self.version, exc)
            return False

    def switch(self, prepared: "PreparedVersion") -> None:
        self.model, self.version, self.local = prepared.model, prepared.version, prepared.local
        self.metadata = prepared.metadata
        self.stats["reloads"] += 1
        log.info("now serving %s version %s", self.name, prepared.version)


@dataclass(frozen=True)
class PreparedVersion:
    """A version loaded in Triton (and in a local runtime) that the predictor has not switched to yet."""

    model: RepositoryModel
    version: int
    local: LocalOnnxRuntime
    metadata: dict


def grpc_status(exc: BaseException) -> grpc.StatusCode | None:
    """The gRPC status code of a failed Triton call, if it has one."""
    if isinstance(exc, InferenceServerException):  # tritonclient's wrapping of a grpc.RpcError: "StatusCode.X"
        name = str(exc.status()).rsplit(".", 1)[-1]
        return grpc.StatusCode.__members__.get(name)
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        return exc.code()
    return None


def retryable(exc: BaseException) -> bool:
    """Is the error transient (``RETRYABLE_STATUSES``), so that the same request may succeed on a retry?"""
    return grpc_status(exc) in RETRYABLE_STATUSES


def deadline_exceeded(exc: BaseException) -> bool:
    """Did the call end because its deadline passed (rather than a quick error worth retrying)?"""
    if isinstance(exc, TimeoutError):  # asyncio.TimeoutError is TimeoutError
        return True
    return grpc_status(exc) == grpc.StatusCode.DEADLINE_EXCEEDED
