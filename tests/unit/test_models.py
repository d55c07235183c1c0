"""The model code still describes the committed graphs: each platform's MTAF-static and MTAF-temporal content
encoder in model_repo/, its weights read back into trainer/models.py's modules and exported again through
trainer/export.py, gives the committed file's outputs. (The temporal head's GRU is unrolled in the committed
file, so its weights do not read back; tests/train compares it with PyTorch after export.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import numpy_helper  # noqa: E402

from popscore import features  # noqa: E402
from popscore.trainer import export  # noqa: E402
from popscore.trainer.models import MTAFConfig, build_mtaf  # noqa: E402

REPO = Path(__file__).resolve().parents[2] / "model_repo"
COMMITTED = sorted(f"{model.name}/{max(int(v.name) for v in model.iterdir() if v.name.isdigit())}"
                   for model in REPO.iterdir() if model.name.endswith(("_static", "_temporal_content")))


def weights_of(path: Path) -> dict[str, np.ndarray]:
    """The graph's weights by state_dict key: named initializers carry the key (after the export wrapper's
    ``owner.``); a Linear's weight is exported transposed for a MatMul node named after the module."""
    graph = onnx.load(str(path)).graph
    initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    weights = {name.removeprefix("owner."): value for name, value in initializers.items() if name.startswith("owner.")}
    for node in graph.node:
        for name in node.input:
            if name in initializers and not name.startswith("owner."):
                if node.op_type == "MatMul":  # [/owner]/encoder/fusion/v/MatMul -> encoder.fusion.v.weight
                    module = node.name.strip("/").split("/")[:-1]
                    weights[".".join(module[1:] if module[0] == "owner" else module) + ".weight"] = initializers[name].T
                elif node.op_type == "Expand":  # the static interval margin, broadcast to the batch
                    weights["interval_margin"] = initializers[name].reshape(1)
    return weights


def random_inputs(spec: features.FeatureSpec, rows: int = 40, tokens: int = 9) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    inputs = {"static_features": rng.normal(size=(rows, spec.static_dim)),
              "text_tokens": rng.normal(size=(rows, tokens, features.TEXT_DIM)),
              "text_token_mask": np.c_[np.ones((rows, 1)), rng.random((rows, tokens - 1)) > 0.4],
              "visual_embedding": rng.normal(size=(rows, features.VISUAL_DIM)),
              "audio_embedding": rng.normal(size=(rows, features.AUDIO_DIM)),
              "modality_mask": np.c_[np.ones(rows), rng.random((rows, 3)) > 0.5]}
    return {k: v.astype(np.float32) for k, v in inputs.items()}


@pytest.mark.parametrize("committed", COMMITTED)
def test_committed_graph_is_what_the_model_code_exports(committed, tmp_path):
    version_dir = REPO / committed
    meta = json.loads((version_dir / "metadata.json").read_text())
    model = build_mtaf(MTAFConfig(**meta["model_config"])).eval()
    if str(meta.get("fusion", "")).startswith("late"):  # popscore_reddit_image_static: a title and an image MTAF
        from popscore.trainer.memes import late_fusion

        model = late_fusion(model, build_mtaf(MTAFConfig(**meta["model_config"])).eval())
    kind = "content" if committed.split("/")[0].endswith("_temporal_content") else "static"
    weights = weights_of(version_dir / "model.onnx")
    state = model.state_dict()
    read_back = {k: torch.from_numpy(v.copy()) for k, v in weights.items() if k in state}
    if str(meta.get("fusion", "")).startswith("late"):  # the exporter keeps one copy of equal constants
        read_back.update({k: read_back[k.replace("image.", "title.", 1)] for k in state
                          if k.startswith("image.") and k not in read_back
                          and k.replace("image.", "title.", 1) in read_back})
    expected = {k for k in state if k.startswith("encoder.")} if kind == "content" else set(state)
    assert expected <= set(read_back), sorted(expected - set(read_back))
    model.load_state_dict({**state, **read_back})

    (graph,) = [g for g in export.onnx_graphs(model) if g.kind == kind]
    spec = features.FeatureSpec.from_dict(meta["feature_spec"])
    inputs = random_inputs(spec)
    export.export_onnx(graph, tmp_path / "model.onnx", inputs, gru_steps=spec.n_bins)
    ours = export.onnx_predict(tmp_path / "model.onnx", inputs)
    committed_out = export.onnx_predict(version_dir / "model.onnx", inputs)
    assert list(ours) == list(committed_out) == meta["outputs"]
    for name in committed_out:
        np.testing.assert_allclose(ours[name], committed_out[name], rtol=0, atol=1e-6, err_msg=name)
