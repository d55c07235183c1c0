"""Exported GRUs rewritten as plain matrix products, the same function in a form ONNX Runtime runs faster.

ONNX Runtime's CPU GRU kernel takes most of the temporal head's time. Unrolled over its steps, with each
gate's input projection done for all steps in one Gemm and the recurrent one as a Gemm per step, the head
runs faster at the batch sizes the worker's micro-batches and Triton's dynamic batching send (tens of rows
and more; a call of a few rows is slower, having more nodes to dispatch), with outputs within ~1e-5. The graph
around the GRU is unchanged: ``Y`` and ``Y_h`` keep the ONNX layouts, so the exporter's transposes still apply.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

GATES = "zrh"  # ONNX's gate order in W, R and B


def unroll_grus(model: onnx.ModelProto, seq_len: int) -> onnx.ModelProto:
    """``model`` with each GRU node replaced by its unrolled steps (in place; also returned). The sequence
    length must be fixed (``seq_len``); only what torch's ``nn.GRU`` exports is handled (any direction,
    ``linear_before_reset=1``, default activations, ``initial_h`` given, no ``sequence_lens``)."""
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    out_nodes = []
    for node in graph.node:
        if node.op_type != "GRU":
            out_nodes.append(node)
            continue
        nodes, initializers = _unrolled(node, {n: numpy_helper.to_array(weights[n]) for n in node.input[1:4]},
                                        seq_len)
        out_nodes += nodes
        graph.initializer.extend(initializers)
    used = {name for node in out_nodes for name in node.input}
    del graph.node[:]
    graph.node.extend(out_nodes)
    for tensor in [t for t in graph.initializer if t.name not in used and t.name in weights]:
        graph.initializer.remove(tensor)  # the GRU's packed W, R and B
    onnx.checker.check_model(model)
    return model


def _unrolled(gru: onnx.NodeProto, weights: dict[str, np.ndarray], seq_len: int
              ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    attrs = {a.name: helper.get_attribute_value(a) for a in gru.attribute}
    direction = attrs.pop("direction", b"forward").decode()
    hidden = attrs.pop("hidden_size")
    if attrs != {"linear_before_reset": 1}:
        raise ValueError(f"GRU {gru.name}: attributes {attrs} are not handled")
    inputs = list(gru.input) + [""] * (6 - len(gru.input))
    x, w_name, r_name, b_name, seq_lens, initial_h = inputs[:6]
    if seq_lens or not initial_h or not b_name:
        raise ValueError(f"GRU {gru.name}: sequence_lens, a missing initial_h or a missing B are not handled")
    w, r, b = weights[w_name], weights[r_name], weights[b_name]  # [D, 3H, I], [D, 3H, H], [D, 6H]
    n_dirs, n_in = w.shape[0], w.shape[2]
    prefix = f"{gru.name}/unrolled/"
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []

    def const(name: str, value: np.ndarray) -> str:
        initializers.append(numpy_helper.from_array(np.array(value, order="C"), prefix + name))  # keeps 0-d
        return prefix + name

    def node(op: str, ins: list[str], n_out: int = 1, **kwargs) -> str | list[str]:
        outs = [f"{prefix}{op}_{len(nodes)}_{i}" for i in range(n_out)]
        nodes.append(helper.make_node(op, ins, outs, **kwargs))
        return outs[0] if n_out == 1 else outs

    def gate(d: int, k: int, matrix: np.ndarray) -> np.ndarray:
        return matrix[d, k * hidden:(k + 1) * hidden].astype(np.float32)

    flat_x = node("Reshape", [x, const("flat_x_shape", np.array([-1, n_in], np.int64))])  # [T*B, I], time-major
    per_step, last = {}, {}
    for d in range(n_dirs):
        # Input projections of all steps at once, one Gemm per gate, then split into steps. The z and r gates
        # take both biases here; h keeps its recurrent bias for inside the reset gate (linear_before_reset).
        projected = {}
        for k, g in enumerate(GATES):
            bias = gate(d, k, b) + (gate(d, k + 3, b) if g in "zr" else 0.0)
            full = node("Gemm", [flat_x, const(f"W{d}{g}", gate(d, k, w)), const(f"Wb{d}{g}", bias)], transB=1)
            projected[g] = node("Split", [full], n_out=seq_len, axis=0)  # seq_len x [B, H]
        recurrent = {g: const(f"R{d}{g}", gate(d, k, r)) for k, g in enumerate(GATES)}
        reset_bias = const(f"Rb{d}h", gate(d, 5, b))
        h = node("Gather", [initial_h, const(f"dir{d}", np.array(d, np.int64))], axis=0)  # [B, H]
        backward = direction == "reverse" or (direction == "bidirectional" and d == 1)
        for t in (reversed(range(seq_len)) if backward else range(seq_len)):
            z = node("Sigmoid", [node("Gemm", [h, recurrent["z"], projected["z"][t]], transB=1)])
            reset = node("Sigmoid", [node("Gemm", [h, recurrent["r"], projected["r"][t]], transB=1)])
            candidate = node("Tanh", [node("Add", [projected["h"][t], node("Mul", [
                reset, node("Gemm", [h, recurrent["h"], reset_bias], transB=1)])])])
            h = node("Add", [candidate, node("Mul", [z, node("Sub", [h, candidate])])])  # (1 - z) n + z h
            per_step[d, t] = h
        last[d] = h
    y, y_h = (list(gru.output) + ["", ""])[:2]
    axis0 = const("axis0", np.array([0], np.int64))
    if y:  # [T, D, B, H]: steps stacked per direction as [D, T, B, H], then one transpose
        stacked = node("Concat", [per_step[d, t] for d in range(n_dirs) for t in range(seq_len)], axis=0)
        shape = const("y_shape", np.array([n_dirs, seq_len, -1, hidden], np.int64))
        nodes.append(helper.make_node("Transpose", [node("Reshape", [stacked, shape])], [y], perm=[1, 0, 2, 3]))
    if y_h:
        nodes.append(helper.make_node("Concat", [node("Unsqueeze", [last[d], axis0]) for d in range(n_dirs)], [y_h],
                                      axis=0))
    return nodes, initializers
