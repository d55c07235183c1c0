"""The worker has Triton load every model it uses that Triton does not have: the text encoder unloaded before the
worker starts is loaded at its start and predictions carry word attention served by Triton; unloaded under the
running worker, it is loaded again at the next refresh. ``/readyz`` and ``popscore_triton_up`` report it."""

from __future__ import annotations

import time
import urllib.request

import pytest
import tritonclient.grpc as grpcclient

from popscore.stream.served_models import SHARED_PLATFORM, TEXT_ENCODER
from tests.integration.test_pipeline import real_slice, replay_and_collect, web_json

pytestmark = pytest.mark.integration


def triton(stack) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(stack.state.endpoints_obj().as_dict()["triton_grpc"])


def unload_encoder(stack) -> None:
    client = triton(stack)
    client.unload_model(TEXT_ENCODER)
    deadline = time.monotonic() + 30
    while client.is_model_ready(TEXT_ENCODER):
        assert time.monotonic() < deadline, "Triton did not unload the text encoder"
        time.sleep(0.2)


def wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, what
        time.sleep(0.5)


def triton_up(stack) -> dict[tuple[str, str], float]:
    url = stack.state.endpoints_obj().as_dict()["worker_metrics"]
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith("popscore_triton_up{"):
            labels, value = line[len("popscore_triton_up{"):].rsplit("} ", 1)
            parsed = dict(part.split("=", 1) for part in labels.split(","))
            values[(parsed["model"].strip('"'), parsed["platform"].strip('"'))] = float(value)
    return values


def test_the_worker_loads_the_text_encoder_triton_does_not_have(private_stack):
    stack = private_stack
    stack.stop_worker()
    unload_encoder(stack)
    assert not triton(stack).is_model_ready(TEXT_ENCODER)

    stack.start_worker()
    assert triton(stack).is_model_ready(TEXT_ENCODER), "the worker started without loading the text encoder"
    encoder = web_json(stack, "/readyz")["models"][TEXT_ENCODER]
    assert encoder["kind"] == "text_encoder" and encoder["platform"] == SHARED_PLATFORM
    assert encoder["triton_ready"] is True and encoder["breaker"] == "closed"
    # every model the worker serves is in the report, each ready in Triton
    models = web_json(stack, "/readyz")["models"]
    repository = {m["name"] for m in triton(stack).get_model_repository_index(as_json=True)["models"]}
    assert set(models) <= repository and len(models) >= 4
    assert all(m["triton_ready"] for m in models.values()), models

    events = real_slice("enc-", n_posts=8)
    grouped = replay_and_collect(stack, "enc-", events)
    statics = [r for records in grouped.values() for r in records if r["model"] == "static"]
    assert statics and all(r["explanation"]["word_attention"] for r in statics)
    encoder = web_json(stack, "/readyz")["models"][TEXT_ENCODER]
    assert encoder["triton"] > 0 and encoder["local"] == 0, encoder  # Triton embedded the titles, not the fallback
    assert wait_for(lambda: triton_up(stack).get(("text_encoder", SHARED_PLATFORM)) == 1.0, 30,
                    "popscore_triton_up does not show the text encoder")

    # unloaded under the running worker: loaded again at a refresh (the private stack refreshes every second)
    unload_encoder(stack)
    wait_for(lambda: triton(stack).is_model_ready(TEXT_ENCODER), 60, "the worker did not load the encoder again")
    wait_for(lambda: web_json(stack, "/readyz")["models"][TEXT_ENCODER]["triton_ready"], 30,
             "/readyz does not report the encoder ready again")
