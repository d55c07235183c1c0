"""ONNX export, PyTorch parity check, Triton model repository layout and the promotion gate.

Layout (Triton, onnxruntime backend; the embedded stack wraps the same files in a Python backend):
    model_repo/<name>/config.pbtxt           names/dtypes/dims from popscore.features (the serving contract)
    model_repo/<name>/<n>/model.onnx         promoted versions only, n = 1, 2, ...
    model_repo/<name>/<n>/metadata.json      metrics, data window, feature spec + hash, code version, git sha
Candidates are first written under .popscore/candidates/<name>/<stamp>/; one becomes version n+1 only if
its MAE on the validation window is not worse than the serving (highest) version's MAE on the same inputs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from popscore import features as F

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


def export_onnx(model, path: Path, example: dict[str, np.ndarray], opset: int = 17) -> None:
    """Export with a dynamic batch dimension on every input and output."""
    import torch

    from popscore.trainer.models import OnnxWrapper

    model.eval()
    names, outs = model.input_names(), model.output_names()
    args = tuple(torch.from_numpy(np.ascontiguousarray(example[n][:2])) for n in names)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        OnnxWrapper(model).eval(), args, str(path), input_names=names, output_names=outs, opset_version=opset,
        dynamic_axes={n: {0: "batch"} for n in names + outs}, dynamo=False,
    )  # fmt: skip
    model.eval()  # the exporter restores the wrapper's mode, which propagates to the model


def onnx_predict(path: Path, inputs: dict[str, np.ndarray], batch: int = 4096) -> dict[str, np.ndarray]:
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


def parity(model, path: Path, inputs: dict[str, np.ndarray]) -> float:
    """Max abs difference between PyTorch and onnxruntime over all outputs."""
    import torch

    names = model.input_names()
    with torch.no_grad():
        ref = model(**{k: torch.from_numpy(np.ascontiguousarray(inputs[k])) for k in names})
    got = onnx_predict(path, {k: inputs[k] for k in names})
    return max(float(np.abs(ref[k].numpy() - got[k]).max()) for k in model.output_names())


def config_pbtxt(name: str, kind: str, spec: F.FeatureSpec, max_batch_size: int = 1024) -> str:
    ins = F.temporal_inputs(spec) if kind == "temporal" else F.static_inputs(spec)
    outs = F.temporal_outputs(spec) if kind == "temporal" else F.static_outputs(spec)

    def block(t: F.TensorSpec) -> str:
        dims = ", ".join(str(d) for d in t.dims)
        return f'  {{\n    name: "{t.name}"\n    data_type: {t.data_type}\n    dims: [ {dims} ]\n  }}'

    return (
        f'name: "{name}"\n'
        'platform: "onnxruntime_onnx"\n'
        f"max_batch_size: {max_batch_size}\n"
        "input [\n" + ",\n".join(block(t) for t in ins) + "\n]\n"
        "output [\n" + ",\n".join(block(t) for t in outs) + "\n]\n"
        "dynamic_batching {\n  preferred_batch_size: [ 64, 256, 1024 ]\n  max_queue_delay_microseconds: 2000\n}\n"
        "version_policy: { latest: { num_versions: 1 } }\n"
        'instance_group [ { count: 1, kind: KIND_CPU } ]\n'
    )


def versions(model_dir: Path) -> list[int]:
    if not model_dir.exists():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and (p / "model.onnx").exists())


def mae_of(path: Path, ex_inputs: dict[str, np.ndarray], target: np.ndarray) -> float:
    pred = onnx_predict(path, ex_inputs)["log_score"][:, 0]
    return float(np.abs(pred - target).mean())


def export_and_promote(
    model,
    kind: str,
    ex,
    repo: Path,
    *,
    spec: F.FeatureSpec,
    metrics: list[dict],
    window: dict,
    dataset: str,
    seed: int,
    force: bool = False,
    max_batch_size: int = 1024,
    train_config: dict | None = None,
) -> dict[str, Any]:
    """Export ``model`` as a candidate, check parity, and promote it into ``repo`` if the gate passes.
    ``ex`` are the validation-window examples (trainer.data.Examples)."""
    name = F.MODEL_NAMES[kind]
    temporal = kind == "temporal"
    stamp = time.strftime("%Y%m%dT%H%M%S")
    cand_dir = CANDIDATES / name / stamp
    cand = cand_dir / "model.onnx"
    inputs = ex.inputs_at(None, temporal)
    export_onnx(model, cand, inputs)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(ex), size=min(len(ex), 2048), replace=False))
    diff = parity(model, cand, {k: v[rows] for k, v in inputs.items()})
    if not diff <= PARITY_TOL:
        raise RuntimeError(f"ONNX parity failed for {name}: max abs diff {diff:.3g} > {PARITY_TOL}")
    cand_mae = mae_of(cand, inputs, ex.target)
    model_dir = Path(repo) / name
    have = versions(model_dir)
    gate: dict[str, Any] = {"candidate_mae": cand_mae, "n": int(len(ex))}
    promote = True
    if have and not force:
        serving = model_dir / str(have[-1]) / "model.onnx"
        serving_meta = model_dir / str(have[-1]) / "metadata.json"
        serving_hash = json.loads(serving_meta.read_text()).get("feature_spec_hash") if serving_meta.exists() else None
        gate["serving_version"] = have[-1]
        if serving_hash != spec.hash():
            gate["reason"] = f"feature spec {spec.hash()} differs from the serving version's {serving_hash}: not comparable, use force"
            promote = False
        else:
            try:
                serving_mae = mae_of(serving, inputs, ex.target)
                gate["serving_mae"] = serving_mae
                promote = cand_mae <= serving_mae + 1e-9
            except Exception as exc:  # the serving model does not run on these inputs
                gate["reason"] = f"serving version failed on the validation inputs: {type(exc).__name__}: {exc}"[:500]
                promote = False
    gate["promoted"] = promote
    meta = {
        "model": name,
        "kind": kind,
        "dataset": dataset,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seed": seed,
        "metrics": metrics,
        "data_window": window,
        "feature_spec": spec.to_dict(),
        "feature_spec_hash": spec.hash(),
        "model_config": model.cfg.to_dict(),
        "train_config": train_config,
        "inputs": [t.name for t in (F.temporal_inputs(spec) if temporal else F.static_inputs(spec))],
        "outputs": [t.name for t in (F.temporal_outputs(spec) if temporal else F.static_outputs(spec))],
        "parity_max_abs_diff": diff,
        "gate": gate,
        **git_version(),
    }
    (cand_dir / "metadata.json").write_text(json.dumps(meta, indent=1))
    info = {"candidate": str(cand_dir), "parity_max_abs_diff": diff, **gate}
    if promote:
        version = (have[-1] + 1) if have else 1
        vdir = model_dir / str(version)
        model_dir.mkdir(parents=True, exist_ok=True)
        (model_dir / "config.pbtxt").write_text(config_pbtxt(name, kind, spec, max_batch_size))
        tmp = model_dir / f".{version}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        shutil.copy2(cand, tmp / "model.onnx")
        meta["version"] = version
        (tmp / "metadata.json").write_text(json.dumps(meta, indent=1))
        tmp.rename(vdir)  # a version directory appears complete or not at all
        info["version"] = version
    return info
