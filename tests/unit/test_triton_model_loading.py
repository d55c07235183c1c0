"""``ModelPredictor.ensure_loaded``: asks Triton to load a served version it does not have, and reports (never
raises) when Triton cannot answer, so a worker starts and refreshes with Triton away. The client is a fake:
the real round trip is tests/integration/test_triton_model_loading.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

from popscore.serving.predictor import ModelPredictor
from popscore.settings import ServingSettings


class FakeTriton:
    def __init__(self, loaded: bool, reachable: bool = True, loads: bool = True) -> None:
        self.loaded, self.reachable, self.loads = loaded, reachable, loads
        self.load_calls: list[str] = []

    async def is_model_ready(self, name, version="", client_timeout=None):
        if not self.reachable:
            raise ConnectionError("triton:8001 refused")
        return self.loaded

    async def load_model(self, name, client_timeout=None):
        self.load_calls.append(name)
        if not self.loads:
            raise RuntimeError("failed to load 'popscore_text_encoder'")
        self.loaded = True


def predictor(client: FakeTriton) -> ModelPredictor:
    p = ModelPredictor("popscore_text_encoder", ServingSettings(load_timeout_s=1.0), "unused:1", Path("unused"))
    p.client, p.version = client, 2
    return p


def test_a_loaded_model_is_left_alone():
    client = FakeTriton(loaded=True)
    assert asyncio.run(predictor(client).ensure_loaded()) is True
    assert client.load_calls == []


def test_a_model_triton_does_not_have_is_loaded():
    client = FakeTriton(loaded=False)
    assert asyncio.run(predictor(client).ensure_loaded()) is True
    assert client.load_calls == ["popscore_text_encoder"] and client.loaded


def test_triton_away_or_a_failed_load_is_reported_not_raised():
    assert asyncio.run(predictor(FakeTriton(loaded=False, reachable=False)).ensure_loaded()) is False
    failing = FakeTriton(loaded=False, loads=False)
    assert asyncio.run(predictor(failing).ensure_loaded()) is False
    assert failing.load_calls == ["popscore_text_encoder"]
