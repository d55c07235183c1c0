"""Shared fixtures. The integration fixtures start the embedded stack through the same code as `popscore up`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("POPSCORE_SHARED_DATA", REPO.parent / "shared" / "data"))
MODEL_REPO = Path(os.environ.get("POPSCORE_TEST_MODEL_REPO", REPO / "model_repo"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data sets; tests that need them skip cleanly where the folder is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not available at {SHARED_DATA}")
    return SHARED_DATA


def stack_class():
    """The stack class ``stack.backend`` (POPSCORE_STACK__BACKEND) names: testcontainers where a Docker engine
    answers and the embedded stack otherwise (``auto``), or the one named."""
    from popscore.settings import Settings
    from popscore.tools.stack.containers import select_stack_class

    return select_stack_class(Settings().stack.backend)


def pytest_report_header(config):
    return f"popscore integration stack: {stack_class().kind}"


@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory):
    from popscore.settings import Settings

    settings = Settings()
    settings.stack.run_dir = tmp_path_factory.mktemp("stack")
    settings.stack.model_repo = MODEL_REPO
    return settings


@pytest.fixture(scope="session")
def embedded_stack(stack_settings):
    """Broker, Redis, Triton and the worker, running for the whole test session."""
    stack = stack_class()(stack_settings)
    state = stack.start(with_worker=True)
    yield state
    stack.stop()


@pytest.fixture(scope="session")
def endpoints(embedded_stack):
    return embedded_stack.endpoints_obj()


@pytest.fixture(scope="session")
def kafka_bootstrap(endpoints) -> str:
    return endpoints.broker_bootstrap


@pytest.fixture(scope="session")
def redis_url(endpoints) -> str:
    return endpoints.redis_url


@pytest.fixture(scope="module")
def private_stack(request, tmp_path_factory):
    """A stack of the module's own, for tests that restart or break components or read global boards. A module's
    ``configure_private_stack(settings)``, if it has one, adjusts the settings first."""
    import shutil

    from popscore.settings import Settings

    root = tmp_path_factory.mktemp("private")
    settings = Settings()
    settings.stack.run_dir = root / "run"
    settings.stack.model_repo = root / "model_repo"
    shutil.copytree(MODEL_REPO, settings.stack.model_repo)  # tests may add versions to it
    settings.serving.refresh_interval_s = 1.0
    settings.serving.breaker_reset_s = 30.0
    # Small steps: a test's micro-batches span several, so the pipelined steps (one scored by Triton
    # while the next is merged) and their in-order publishing are exercised end to end.
    settings.worker.max_batch_snapshots = 16
    settings.worker.window_snapshots = 40  # and a batch of envelopes spans several windows
    configure = getattr(request.module, "configure_private_stack", None)
    if configure is not None:
        configure(settings)
    stack = stack_class()(settings)
    stack.start(with_worker=True)
    yield stack
    stack.stop()
