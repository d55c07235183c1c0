"""The unrolled GRU computes what ONNX Runtime's GRU kernel computes, in every direction torch exports."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

ort = pytest.importorskip("onnxruntime")

from popscore.trainer.onnx_gru import unroll_grus  # noqa: E402

T, I, H = 5, 3, 4


def gru_model(direction: str, seed: int = 0) -> onnx.ModelProto:
    """One GRU node as torch's exporter writes it (linear_before_reset, zero initial state passed in), both
    outputs used."""
    rng = np.random.default_rng(seed)
    dirs = 2 if direction == "bidirectional" else 1
    weights = [numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name) for name, shape in
               (("W", (dirs, 3 * H, I)), ("R", (dirs, 3 * H, H)), ("B", (dirs, 6 * H)))]
    node = helper.make_node("GRU", ["x", "W", "R", "B", "", "h0"], ["y", "y_h"], direction=direction,
                            hidden_size=H, linear_before_reset=1)
    graph = helper.make_graph(
        [node], "gru",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [T, "batch", I]),
         helper.make_tensor_value_info("h0", TensorProto.FLOAT, [dirs, "batch", H])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [T, dirs, "batch", H]),
         helper.make_tensor_value_info("y_h", TensorProto.FLOAT, [dirs, "batch", H])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, inputs)


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("batch", [1, 7])
def test_unrolled_gru_matches_the_gru_kernel(direction, batch):
    dirs = 2 if direction == "bidirectional" else 1
    rng = np.random.default_rng(1)
    inputs = {"x": rng.normal(size=(T, batch, I)).astype(np.float32),
              "h0": rng.normal(size=(dirs, batch, H)).astype(np.float32)}  # a non-zero start state, too
    expected = run(gru_model(direction), inputs)
    unrolled = unroll_grus(gru_model(direction), seq_len=T)
    assert "GRU" not in {n.op_type for n in unrolled.graph.node}
    assert not {"W", "R", "B"} & {t.name for t in unrolled.graph.initializer}  # the packed weights are gone
    for want, got in zip(expected, run(unrolled, inputs)):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_unhandled_gru_settings_are_refused():
    model = gru_model("forward")
    model.graph.node[0].attribute.append(helper.make_attribute("clip", 1.0))
    with pytest.raises(ValueError, match="not handled"):
        unroll_grus(model, seq_len=T)
