"""The embedded Triton's Python-backend wrapper batches the requests of one ``execute`` call: requests whose
inputs agree in shape run together, others (another title length) run in their own group, and every
request gets its own rows back in order. Triton's utilities are replaced by a minimal stand-in (pure logic)."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np

WRAPPER = Path(__file__).resolve().parents[2] / "serving" / "triton_python_wrapper.py"


class _Tensor:
    def __init__(self, name, array):
        self.name, self.array = name, array

    def as_numpy(self):
        return self.array


class _Request:
    def __init__(self, **inputs):
        self.inputs = {k: _Tensor(k, v) for k, v in inputs.items()}


def _wrapper_module(monkeypatch):
    utils = types.SimpleNamespace(
        Tensor=_Tensor,
        InferenceResponse=lambda output_tensors: {t.name: t.array for t in output_tensors},
        get_input_tensor_by_name=lambda request, name: request.inputs[name],
    )
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", utils)
    spec = importlib.util.spec_from_file_location("wrapper_under_test", WRAPPER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _RecordingSession:
    """Stands in for onnxruntime: output = sum over tokens of each row, and it remembers every run's batch."""

    def __init__(self):
        self.runs = []

    def run(self, names, batch):
        self.runs.append({k: v.shape for k, v in batch.items()})
        return [batch["tokens"].sum(axis=(1, 2)) + batch["mask"].sum(axis=1)]


def test_requests_of_different_token_counts_are_run_in_separate_groups(monkeypatch):
    module = _wrapper_module(monkeypatch)
    model = module.TritonPythonModel()
    model.session, model.input_names, model.output_names = _RecordingSession(), ["tokens", "mask"], ["out"]
    model.max_rows = 256
    requests = [
        _Request(tokens=np.full((2, 3, 4), 1.0), mask=np.ones((2, 3))),  # 3 tokens
        _Request(tokens=np.full((1, 5, 4), 2.0), mask=np.ones((1, 5))),  # 5 tokens
        _Request(tokens=np.full((3, 3, 4), 3.0), mask=np.ones((3, 3))),  # 3 tokens again
    ]
    responses = model.execute(requests)
    assert sorted(run["tokens"] for run in model.session.runs) == [(1, 5, 4), (5, 3, 4)]
    np.testing.assert_array_equal(responses[0]["out"], [15.0, 15.0])
    np.testing.assert_array_equal(responses[1]["out"], [45.0])
    np.testing.assert_array_equal(responses[2]["out"], [39.0, 39.0, 39.0])


def test_a_group_larger_than_max_rows_is_run_in_slices_and_joined_in_order(monkeypatch):
    module = _wrapper_module(monkeypatch)
    model = module.TritonPythonModel()
    model.session, model.input_names, model.output_names = _RecordingSession(), ["tokens", "mask"], ["out"]
    model.max_rows = 4
    first = np.arange(5, dtype=float)[:, None, None] * np.ones((5, 3, 4))  # row i sums to 12 i
    second = (10 + np.arange(4, dtype=float))[:, None, None] * np.ones((4, 3, 4))
    responses = model.execute([_Request(tokens=first, mask=np.ones((5, 3))),
                               _Request(tokens=second, mask=np.ones((4, 3)))])
    assert [run["tokens"][0] for run in model.session.runs] == [4, 4, 1]
    np.testing.assert_array_equal(responses[0]["out"], 12 * np.arange(5) + 3)
    np.testing.assert_array_equal(responses[1]["out"], 12 * (10 + np.arange(4)) + 3)
