"""The shipped ONNX graphs run on the GPU execution providers without a node forced back to the CPU.

ONNX Runtime places a node on the CUDA EP only if the EP has a kernel for its op, at the schema version the
graph's opset resolves to, for its input type; any other node runs on the CPU EP with copies across the PCIe
bus on both sides. ``CUDA_KERNELS`` is the CUDA EP's kernel table for the ops our exports use, copied from
ONNX Runtime's generated kernel list (docs/OperatorKernels.md, "Operators implemented by
CUDAExecutionProvider", main branch; the same kernels exist in the 1.19 ORT of Triton 24.10 for these ops):
op -> (first schema version, last or None for "and later", the types its checked input may have). An op an
export starts using fails here until someone checks it against that list and adds it (or changes the export).

Under TensorRT (temporal head, text encoder) ORT hands TensorRT every node its parser takes and gives the rest
to the CUDA EP, so "every node has a CUDA kernel" is also the bound for what the TensorRT configs can fall
back to. What we can check without a GPU is this table; docs/deployment.md says what to verify on one.
"""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, defs, shape_inference

from popscore.serving.model_repository import list_models
from tests.ops.promql import REPO

MODELS = list_models(REPO / "model_repo")

T = TensorProto
FLOATS = {T.FLOAT, T.FLOAT16, T.DOUBLE, T.BFLOAT16}
INTS = {T.INT8, T.INT16, T.INT32, T.INT64, T.UINT8, T.UINT16, T.UINT32, T.UINT64}
ALL = FLOATS | INTS | {T.BOOL}
ARITH = FLOATS | INTS  # Add/Sub/Mul/Div 14+
COMPARE = {T.FLOAT, T.FLOAT16, T.DOUBLE, T.INT32, T.INT64, T.UINT32, T.UINT64}

CUDA_KERNELS: dict[str, tuple[int, int | None, set[int]]] = {
    "Add": (14, None, ARITH), "Sub": (14, None, ARITH), "Mul": (14, None, ARITH), "Div": (14, None, ARITH),
    "Cast": (13, 18, ALL),
    "Clip": (13, None, {T.FLOAT, T.FLOAT16, T.DOUBLE, T.INT64, T.INT8, T.UINT64, T.UINT8}),
    "Concat": (13, None, ALL), "ConstantOfShape": (9, None, {T.INT64}),
    "DequantizeLinear": (13, 18, {T.INT8, T.UINT8}),
    "Equal": (13, None, COMPARE | {T.BOOL}), "Greater": (13, None, COMPARE), "GreaterOrEqual": (16, None, COMPARE),
    "Erf": (13, None, FLOATS), "Sigmoid": (13, None, FLOATS), "Tanh": (13, None, FLOATS), "Sqrt": (13, None, FLOATS),
    "Softplus": (1, None, FLOATS - {T.BFLOAT16}), "Softmax": (13, None, FLOATS),
    "Conv": (11, None, {T.FLOAT, T.FLOAT16, T.DOUBLE}), "Pad": (13, 17, {T.BOOL, T.FLOAT, T.FLOAT16, T.DOUBLE}),
    "ReduceMean": (13, 17, {T.FLOAT, T.FLOAT16, T.DOUBLE, T.INT32}),
    "Gemm": (13, None, FLOATS), "MatMul": (13, None, FLOATS), "LayerNormalization": (17, None, FLOATS),
    "Max": (13, None, COMPARE | {T.BFLOAT16}), "Min": (13, None, COMPARE | {T.BFLOAT16}),
    "ReduceL2": (1, 17, {T.FLOAT, T.FLOAT16, T.DOUBLE, T.INT32}),
    "ReduceSum": (13, None, FLOATS | {T.INT32, T.INT64}),
    "Expand": (13, None, ALL), "Gather": (13, None, ALL), "Identity": (14, 18, ALL), "Reshape": (14, 18, ALL),
    "Shape": (15, 18, ALL), "Slice": (13, None, ALL), "Split": (13, 17, ALL), "Squeeze": (13, 20, ALL),
    "Transpose": (13, 20, ALL), "Unsqueeze": (13, 20, ALL),
    "Where": (16, None, {T.FLOAT, T.FLOAT16, T.DOUBLE, T.BFLOAT16, T.INT32, T.INT64, T.UINT8}),
}
CHECKED_INPUT = {"Where": 1}  # the input whose type the kernel constrains (else the first)
FOLDED = {"Constant"}  # turned into initializers when ORT loads the graph: no kernel runs
CONTROL_FLOW = {"If", "Loop", "Scan", "GRU", "LSTM", "RNN"}  # the GRU is exported unrolled (trainer/onnx_gru.py)


def load(model, version):
    return shape_inference.infer_shapes(onnx.load(str(model.path / str(version) / "model.onnx")))


def value_types(graph) -> dict[str, int]:
    types = {i.name: i.data_type for i in graph.initializer}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        types[value.name] = value.type.tensor_type.elem_type
    for node in graph.node:
        if node.op_type == "Constant":
            types[node.output[0]] = node.attribute[0].t.data_type
    return types


def cpu_fallbacks(model_proto: onnx.ModelProto) -> list[str]:
    """Each node the CUDA EP has no kernel for, with why."""
    opset = {o.domain or "ai.onnx": o.version for o in model_proto.opset_import}
    types = value_types(model_proto.graph)
    problems = []
    for node in model_proto.graph.node:
        if node.op_type in FOLDED:
            continue
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{node.name}: op {node.domain}:{node.op_type} outside the ONNX domain")
            continue
        kernel = CUDA_KERNELS.get(node.op_type)
        if kernel is None:
            problems.append(f"{node.name}: {node.op_type} is not in the CUDA EP table")
            continue
        first, last, allowed = kernel
        version = defs.get_schema(node.op_type, opset["ai.onnx"]).since_version
        if version < first or (last is not None and version > last):
            problems.append(f"{node.name}: {node.op_type}-{version} outside the CUDA kernels' [{first}, {last}]")
        dtype = types.get(node.input[CHECKED_INPUT.get(node.op_type, 0)])
        if dtype not in allowed:
            problems.append(f"{node.name}: {node.op_type} on {T.DataType.Name(dtype) if dtype else 'unknown'}")
    return problems


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
def test_every_node_has_a_cuda_kernel(model):
    for version in model.versions:
        assert cpu_fallbacks(load(model, version)) == [], f"{model.name} v{version}"


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
def test_graphs_are_plain_onnx_with_a_dynamic_batch_and_no_control_flow(model):
    for version in model.versions:
        proto = load(model, version)
        onnx.checker.check_model(proto)
        assert {o.domain or "ai.onnx" for o in proto.opset_import} == {"ai.onnx"}
        assert 13 <= proto.opset_import[0].version <= 20  # the range the table above was read for
        assert not CONTROL_FLOW & {n.op_type for n in proto.graph.node}, "a GRU/loop left in the graph"
        for value in [*proto.graph.input, *proto.graph.output]:
            batch = value.type.tensor_type.shape.dim[0]
            assert batch.dim_param and not batch.HasField("dim_value"), f"{value.name}: fixed batch axis"


def test_the_check_finds_a_node_without_a_cuda_kernel():
    """An op the CUDA EP lacks (a CPU-only kernel: StringNormalizer) and a type it lacks (Clip on int32)."""
    x = onnx.helper.make_tensor_value_info("x", T.INT32, ["batch", 4])
    y = onnx.helper.make_tensor_value_info("y", T.INT32, ["batch", 4])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Clip", ["x"], ["y"], name="clip")], "g", [x], [y])
    proto = shape_inference.infer_shapes(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]))
    assert cpu_fallbacks(proto) == ["clip: Clip on INT32"]
    proto.graph.node[0].op_type = "StringNormalizer"
    assert cpu_fallbacks(proto) == ["clip: StringNormalizer is not in the CUDA EP table"]
