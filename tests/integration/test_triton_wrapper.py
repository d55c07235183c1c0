"""Every model of model_repo/ answers through the embedded Triton exactly as ONNX Runtime does on the file."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import model_config_pb2

from popscore.serving.model_repository import list_models
from tests.conftest import MODEL_REPO

pytestmark = pytest.mark.integration

MODELS = [m for m in list_models(MODEL_REPO) if m.versions]
DTYPES = {model_config_pb2.TYPE_FP32: ("FP32", np.float32), model_config_pb2.TYPE_INT64: ("INT64", np.int64)}


def test_model_repository_is_not_empty():
    assert MODELS, "model_repo/ holds no model with a version; the worker would have nothing to serve"


def random_inputs(model, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    inputs = {}
    for spec in model.config.input:
        dims = [d if d > 0 else 5 for d in spec.dims]
        dtype = DTYPES[spec.data_type][1]
        inputs[spec.name] = (rng.normal(size=[batch, *dims]) if dtype == np.float32
                             else rng.integers(0, 3, size=[batch, *dims])).astype(dtype)
    return inputs


@pytest.mark.parametrize("model", MODELS, ids=[m.name for m in MODELS])
def test_triton_round_trip_matches_onnx_runtime(model, endpoints):
    rng = np.random.default_rng(7)
    version = model.versions[-1]
    session = ort.InferenceSession(str(model.path / str(version) / "model.onnx"), providers=["CPUExecutionProvider"])
    client = grpcclient.InferenceServerClient(f"{endpoints.host}:{endpoints.triton_grpc_port}")
    assert client.is_model_ready(model.name, str(version))
    output_names = [o.name for o in model.config.output]
    for batch in (1, 7):
        inputs = random_inputs(model, batch, rng)
        expected = session.run(output_names, inputs)
        tensors = []
        for spec in model.config.input:
            tensor = grpcclient.InferInput(spec.name, list(inputs[spec.name].shape), DTYPES[spec.data_type][0])
            tensor.set_data_from_numpy(inputs[spec.name])
            tensors.append(tensor)
        result = client.infer(model.name, tensors, model_version=str(version),
                              outputs=[grpcclient.InferRequestedOutput(n) for n in output_names])
        for name, want in zip(output_names, expected):
            got = result.as_numpy(name)
            assert got is not None and got.shape == want.shape, name
            np.testing.assert_array_equal(got, want)
