"""The graphs each MTAF model is served as, ONNX export, PyTorch parity check, Triton model repository
layout and the promotion gate.

Layout (Triton, onnxruntime backend; the embedded stack wraps the same files in a Python backend):
    model_repo/<name>/config.pbtxt           names/dtypes/dims from popscore.features (the serving contract)
    model_repo/<name>/<n>/model.onnx         promoted versions only, n = 1, 2, ...
    model_repo/<name>/<n>/metadata.json      metrics, data window, feature spec + hash, code version, git sha
One model set per platform: ``popscore_<platform>_static``, ``popscore_<platform>_temporal_content`` and
``popscore_<platform>_temporal`` (features.model_name). MTAF-temporal is two graphs (the content encoder,
then the head) promoted together under one version number; the head's metadata names its content encoder.
Candidates are first written under .popscore/candidates/<name>/<stamp>/; one becomes the next version only if
its MAE on the validation window is not worse than the serving (highest) version's MAE on the same inputs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from popscore import features
from popscore.trainer.data import Examples
from popscore.trainer.models import MTAF, MTAFStatic
from popscore.trainer.triton_config import serving_sections

PARITY_TOL = 1e-4
CANDIDATES = Path(".popscore/candidates")


def git_version() -> dict[str, Any]:
    def run(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception:
            return ""

    try:
        from importlib.metadata import version

        package_version = version("popscore")
    except Exception:
        package_version = None
    return {
        "package_version": package_version,
        "git_sha": run("rev-parse", "HEAD") or None,
        "git_dirty": bool(run("status", "--porcelain", "--untracked-files=no", "--", "popscore/features.py", "trainer")),
    }


def dynamic_axes(names: list[str]) -> dict[str, dict[int, str]]:
    """A dynamic batch axis on every tensor, plus the variable (-1) dims of the serving contract (tokens)."""
    contract = {t.name: t for kind in features.MODEL_KINDS
                for group in features.model_tensors(kind, features.DEFAULT_SPEC) for t in group}
    return {n: {0: "batch", **{i + 1: "tokens" for i, d in enumerate(contract[n].dims if n in contract else ())
                                if d == -1}} for n in names}


@dataclass(frozen=True)
class OnnxGraph:
    """One exported graph: which served model it becomes, the module to trace, its I/O names."""

    kind: str  # one of popscore.features.MODEL_KINDS
    module: nn.Module
    input_names: list[str]
    output_names: list[str]


class _PositionalOutputs(nn.Module):
    """Positional inputs in contract order, tuple outputs in contract order (what torch.onnx.export wants)."""

    def __init__(self, fn: Callable[..., dict[str, torch.Tensor]], input_names: list[str], output_names: list[str],
                 owner: nn.Module) -> None:
        super().__init__()
        self.owner = owner
        self.fn, self.input_names, self.output_names = fn, input_names, output_names

    def forward(self, *args: torch.Tensor):
        out = self.fn(**dict(zip(self.input_names, args)))
        return tuple(out[n] for n in self.output_names)


def onnx_graphs(model: MTAF) -> list[OnnxGraph]:
    """MTAF-static is one graph. MTAF-temporal is two, served side by side with the same version: the
    content encoder (once per post) and the head (per snapshot, from the cached content vector), so a
    snapshot carries a 64-d content vector to Triton instead of ~2,200 embedding floats."""
    if isinstance(model, MTAFStatic):
        names, outs = model.input_names(), model.output_names()
        return [OnnxGraph("static", _PositionalOutputs(model, names, outs, model), names, outs)]

    def encode(**inputs):
        content_vector, modality_weights, word_attention = model.encoder(**inputs)
        return {"content_vector": content_vector, "modality_weights": modality_weights,
                "word_attention": word_attention}

    content_in = [t.name for t in features.STATIC_INPUTS]
    content_out = [t.name for t in features.content_outputs(model.cfg.d_model)]
    head_in = [t.name for t in features.temporal_inputs(features.DEFAULT_SPEC, model.cfg.d_model)]
    head_out = [t.name for t in features.TEMPORAL_OUTPUTS]
    return [
        OnnxGraph("content", _PositionalOutputs(encode, content_in, content_out, model), content_in, content_out),
        OnnxGraph("temporal", _PositionalOutputs(model.predict, head_in, head_out, model), head_in, head_out),
    ]


def export_onnx(graph: OnnxGraph, path: Path, example: dict[str, np.ndarray], gru_steps: int, opset: int = 17) -> None:
    """Export one graph with a dynamic batch dimension on every input and output, and a dynamic token
    dimension on the title's tensors. A GRU is written unrolled over its ``gru_steps`` steps (``onnx_gru``:
    ONNX Runtime runs that faster; export_and_promote's parity check covers it)."""
    import onnx

    from popscore.trainer.onnx_gru import unroll_grus

    graph.module.eval()
    args = tuple(torch.from_numpy(np.ascontiguousarray(example[n][:2])) for n in graph.input_names)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        graph.module, args, str(path), input_names=graph.input_names, output_names=graph.output_names,
        opset_version=opset, dynamic_axes=dynamic_axes(graph.input_names + graph.output_names),
        dynamo=False,
    )  # fmt: skip
    graph.module.eval()  # the exporter restores the wrapper's mode, which propagates to the model
    exported = onnx.load(str(path))
    if any(node.op_type == "GRU" for node in exported.graph.node):
        onnx.save(unroll_grus(exported, gru_steps), str(path))


def onnx_predict(path: Path, inputs: dict[str, np.ndarray], batch: int = 4096) -> dict[str, np.ndarray]:
    """Run one graph; it reads the entries of ``inputs`` named like its inputs."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    n = len(next(iter(inputs.values())))
    outs: dict[str, list] = {}
    for lo in range(0, n, batch):
        res = sess.run(None, {k: np.ascontiguousarray(inputs[k][lo : lo + batch], dtype=np.float32) for k in names})
        for o, v in zip(sess.get_outputs(), res):
            outs.setdefault(o.name, []).append(v)
    return {k: np.concatenate(v) for k, v in outs.items()}


def pipeline_predict(paths: list[Path], inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run graphs in order, each reading the raw inputs and what the earlier ones produced (content
    encoder, then head): what the worker does, minus the cache."""
    values, outs = dict(inputs), {}
    for path in paths:
        res = onnx_predict(path, values)
        values.update(res)
        outs.update(res)
    return outs


def parity(model: MTAF, paths: list[Path], inputs: dict[str, np.ndarray]) -> float:
    """Max abs difference between PyTorch and the exported graphs run by onnxruntime, over all outputs."""
    with torch.no_grad():
        ref = model(**{k: torch.from_numpy(np.ascontiguousarray(inputs[k])) for k in model.input_names()})
    got = pipeline_predict(paths, inputs)
    return max(float(np.abs(ref[k].numpy() - got[k]).max()) for k in model.output_names())


def config_pbtxt(name: str, kind: str, spec: features.FeatureSpec, max_batch_size: int = 1024,
                 content_dim: int = features.CONTENT_DIM) -> str:
    ins, outs = features.model_tensors(kind, spec, content_dim)

    def block(t: features.TensorSpec) -> str:
        dims = ", ".join(str(d) for d in t.dims)
        return f'  {{\n    name: "{t.name}"\n    data_type: {t.data_type}\n    dims: [ {dims} ]\n  }}'

    family = "temporal_head" if kind == "temporal" else "head"
    return (
        f'name: "{name}"\n'
        'platform: "onnxruntime_onnx"\n'
        f"max_batch_size: {max_batch_size}\n"
        "input [\n" + ",\n".join(block(t) for t in ins) + "\n]\n"
        "output [\n" + ",\n".join(block(t) for t in outs) + "\n]\n"
        + serving_sections(family, max_batch_size, [(t.name, t.dims) for t in ins])
    )


def versions(model_dir: Path) -> list[int]:
    if not model_dir.exists():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and (p / "model.onnx").exists())


def mae_of(paths: list[Path], ex_inputs: dict[str, np.ndarray], target: np.ndarray) -> float:
    pred = pipeline_predict(paths, ex_inputs)["log_score"][:, 0]
    return float(np.abs(pred - target).mean())


def served_graphs(repo: Path, name: str, version: int) -> list[Path]:
    """The graphs that make up a served version: the head alone, or its paired content encoder first."""
    head = Path(repo) / name / str(version)
    meta_path = head / "metadata.json"
    paired = json.loads(meta_path.read_text()).get("content_model") if meta_path.exists() else None
    first = [Path(repo) / paired["name"] / str(paired["version"]) / "model.onnx"] if paired else []
    return first + [head / "model.onnx"]


def output_bounds(train: Examples, temporal: bool) -> dict:
    """The ranges the training data supports, declared in the exported metadata: the worker clamps scores and
    intervals into ``log_score`` and flags predictions whose inputs fall outside the others."""
    bounds = {"log_score": [float(train.target.min()), float(train.target.max())]}
    if temporal:
        bounds["age_h"] = [float(train.age_h.min()), float(train.age_h.max())]
        bounds["log1p_score_now"] = [float(train.log_now.min()), float(train.log_now.max())]
    return bounds


def export_and_promote(
    model: MTAF,
    kind: str,
    ex: Examples,
    repo: Path,
    *,
    spec: features.FeatureSpec,
    metrics: list[dict],
    window: dict,
    dataset: str,
    platform: str,
    seed: int,
    force: bool = False,
    max_batch_size: int = 1024,
    train_config: dict | None = None,
    extra_metadata: dict | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Export ``model`` (``kind`` static or temporal) as a candidate, check parity, and promote it into
    ``repo`` if the gate passes. ``ex`` are the validation-window examples: the gate compares the
    candidate's MAE on them with the serving version's on the same inputs."""
    if name is not None and kind != "static":
        raise ValueError("only a static model (one graph) can be exported under its own name")
    name = name or features.model_name(kind, platform)

    def graph_name(graph_kind: str) -> str:  # a named static model is one graph: the name is the graph's
        return name if graph_kind == kind else features.model_name(graph_kind, platform)

    stamp = time.strftime("%Y%m%dT%H%M%S")
    cand_dir = CANDIDATES / name / stamp
    graphs = onnx_graphs(model)
    inputs = ex.inputs_at(None, kind == "temporal")
    example = dict(inputs)
    paths = []
    for graph in graphs:
        path = cand_dir / graph_name(graph.kind) / "model.onnx"
        export_onnx(graph, path, example, gru_steps=spec.n_bins)
        example.update(onnx_predict(path, {k: v[:2] for k, v in example.items()}))  # the next graph's inputs
        paths.append(path)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(ex), size=min(len(ex), 2048), replace=False))
    diff = parity(model, paths, {k: v[rows] for k, v in inputs.items()})
    if not diff <= PARITY_TOL:
        raise RuntimeError(f"ONNX parity failed for {name}: max abs diff {diff:.3g} > {PARITY_TOL}")
    cand_mae = mae_of(paths, inputs, ex.target)
    have = versions(Path(repo) / name)
    gate: dict[str, Any] = {"candidate_mae": cand_mae, "n": int(len(ex)), "window": "validation"}
    promote = True
    if have:
        serving_meta = Path(repo) / name / str(have[-1]) / "metadata.json"
        serving_hash = json.loads(serving_meta.read_text()).get("feature_spec_hash") if serving_meta.exists() else None
        gate["serving_version"] = have[-1]
        if serving_hash != spec.hash():
            gate["reason"] = f"feature spec {spec.hash()} differs from the serving version's {serving_hash}: not comparable, use force"
            promote = False
        else:
            try:
                serving_mae = mae_of(served_graphs(repo, name, have[-1]), inputs, ex.target)
                gate["serving_mae"] = serving_mae
                promote = cand_mae <= serving_mae + 1e-9
            except Exception as exc:  # the serving model does not run on these inputs
                gate["reason"] = f"serving version failed on the validation inputs: {type(exc).__name__}: {exc}"[:500]
                promote = False
    if force and not promote:
        gate["forced"] = True  # recorded with what the gate would have said
        promote = True
    gate["promoted"] = promote
    # One number for every graph of the model, so the head and its content encoder always pair by version.
    version = 1 + max([0, *(v for g in graphs for v in versions(Path(repo) / graph_name(g.kind)))])
    base_meta = {
        "dataset": dataset,
        "platform": platform,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seed": seed,
        "metrics": metrics,
        "data_window": window,
        "feature_spec": spec.to_dict(),
        "feature_spec_hash": spec.hash(),
        "model_config": model.cfg.to_dict(),
        "train_config": train_config,
        "parity_max_abs_diff": diff,
        "gate": gate,
        **(extra_metadata or {}),
        **git_version(),
    }
    metas = []
    for graph, path in zip(graphs, paths):
        meta = {"model": graph_name(graph.kind), "kind": graph.kind, **base_meta,
                "inputs": graph.input_names, "outputs": graph.output_names}
        if graph.kind == "temporal" and len(graphs) > 1:
            meta["content_model"] = {"name": features.model_name("content", platform), "version": version}
        (path.parent / "metadata.json").write_text(json.dumps(meta, indent=1))
        metas.append(meta)
    info = {"candidate": str(cand_dir), "parity_max_abs_diff": diff, **gate}
    if promote:
        for graph, path, meta in zip(graphs, paths, metas):  # the head last: its version appears when complete
            model_dir = Path(repo) / graph_name(graph.kind)
            model_dir.mkdir(parents=True, exist_ok=True)
            (model_dir / "config.pbtxt").write_text(
                config_pbtxt(model_dir.name, graph.kind, spec, max_batch_size, model.cfg.d_model))
            tmp = model_dir / f".{version}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            shutil.copy2(path, tmp / "model.onnx")
            (tmp / "metadata.json").write_text(json.dumps({**meta, "version": version}, indent=1))
            tmp.rename(model_dir / str(version))  # a version directory appears complete or not at all
        info["version"] = version
    return info
