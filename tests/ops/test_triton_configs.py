"""The shipped model repository is configured for production Triton on a GPU, and the embedded stack's mirror of
the same repository for its CPU.

Every ``model_repo/*/config.pbtxt``: GPU instance groups, dynamic batching with preferred sizes the model can
take, inputs and outputs that are the ONNX file's (names, types, dims), TensorRT profiles that cover the
batch range with the ONNX shapes, and the very text the trainer's writers produce (so a new export is
configured the same). The mirror (serving/model_repository.py) of the same repository is CPU-only.
"""

from __future__ import annotations

import json

import onnx
import pytest
from onnx import TensorProto
from tritonclient.grpc import model_config_pb2 as mc

from popscore import features as F
from popscore.serving.model_repository import build_python_backend_repository, list_models, read_config
from popscore.serving.model_sets import parse_model_name
from popscore.stream.served_models import image_static_name
from tests.ops.promql import REPO

MODEL_REPO = REPO / "model_repo"
MODELS = list_models(MODEL_REPO)
TRITON_TO_ONNX = {mc.TYPE_FP32: TensorProto.FLOAT, mc.TYPE_INT64: TensorProto.INT64,
                  mc.TYPE_INT32: TensorProto.INT32, mc.TYPE_BOOL: TensorProto.BOOL}


def model_kind(name: str) -> str:
    """The kind of a set's model, "static" for a platform's image static model, "encoder" for the encoders."""
    parsed = parse_model_name(name)
    if parsed is not None:
        return parsed[0]
    return "static" if any(name == image_static_name(p) for p in (name.split("_")[1],)) else "encoder"


def test_the_repository_holds_every_model_family():
    names = {m.name for m in MODELS}
    assert "popscore_text_encoder" in names
    assert {"static", "content", "temporal"} <= {parse_model_name(n)[0] for n in names if parse_model_name(n)}


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
def test_every_instance_runs_on_the_gpu(model):
    groups = model.config.instance_group
    assert groups, f"{model.name}: no instance_group (Triton would pick the kind itself)"
    for group in groups:
        assert group.kind == mc.ModelInstanceGroup.KIND_GPU, f"{model.name}: {group}"
        assert group.count >= 1


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
def test_dynamic_batching_has_preferred_sizes_the_model_takes(model):
    config = model.config
    assert config.HasField("dynamic_batching"), f"{model.name}: no dynamic batching"
    sizes = list(config.dynamic_batching.preferred_batch_size)
    assert sizes, f"{model.name}: no preferred batch sizes"
    assert all(0 < s <= config.max_batch_size for s in sizes), (sizes, config.max_batch_size)
    assert sizes == sorted(set(sizes))
    assert 0 < config.dynamic_batching.max_queue_delay_microseconds <= 2000


def onnx_tensors(values) -> dict[str, tuple[int, list]]:
    """name -> (elem type, dims with None for a symbolic or unknown dim)."""
    out = {}
    for value in values:
        tensor = value.type.tensor_type
        out[value.name] = (tensor.elem_type,
                           [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim])
    return out


def config_tensors(specs) -> dict[str, tuple[int, list]]:
    """The config's tensors with their batch axis: (elem type, [None, *dims]), None where a dim is -1."""
    return {t.name: (TRITON_TO_ONNX[t.data_type], [None, *(None if d == -1 else d for d in t.dims)])
            for t in specs}


def assert_same_tensors(config: dict, graph: dict, what: str) -> None:
    """Same names, types and ranks; a dim the graph fixes is the config's. A dim the graph leaves symbolic
    must be -1 in the config for inputs (the worker sends any size) but may be fixed for outputs (the
    config then states what shape inference could not)."""
    assert set(config) == set(graph), what
    for name, (dtype, dims) in config.items():
        graph_dtype, graph_dims = graph[name]
        assert dtype == graph_dtype, (what, name)
        assert len(dims) == len(graph_dims), (what, name, dims, graph_dims)
        assert graph_dims[0] is None, f"{what} {name}: the batch axis must be dynamic"
        for axis, (got, declared) in enumerate(zip(dims, graph_dims)):
            if declared is not None or what == "input":
                assert got == declared, (what, name, axis, dims, graph_dims)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
def test_inputs_and_outputs_are_the_onnx_files(model):
    assert model.config.max_batch_size > 0  # the batch axis is implicit in the config dims
    for version in model.versions:
        graph = onnx.shape_inference.infer_shapes(onnx.load(str(model.path / str(version) / "model.onnx"))).graph
        initializers = {i.name for i in graph.initializer}
        assert_same_tensors(config_tensors(model.config.input),
                            onnx_tensors(i for i in graph.input if i.name not in initializers), "input")
        assert_same_tensors(config_tensors(model.config.output), onnx_tensors(graph.output), "output")


def trt_parameters(config: mc.ModelConfig) -> dict[str, str] | None:
    accelerators = config.optimization.execution_accelerators.gpu_execution_accelerator
    trt = [a for a in accelerators if a.name == "tensorrt"]
    return dict(trt[0].parameters) if trt else None


def parse_profile(text: str) -> dict[str, list[int]]:
    return {name: [int(d) for d in dims.split("x")]
            for name, dims in (item.split(":") for item in text.split(","))}


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
def test_tensorrt_profiles_cover_the_batch_range_with_the_onnx_shapes(model):
    params = trt_parameters(model.config)
    if params is None:
        kind = model_kind(model.name)
        assert kind in ("static", "content"), f"{model.name}: only the dynamic-token heads run on the CUDA EP alone"
        return
    assert params["precision_mode"] in ("FP32", "FP16")
    assert params["trt_engine_cache_enable"] == "1"
    assert not params["trt_engine_cache_path"].startswith("/models"), "the repository is mounted read-only"
    dims = {t.name: list(t.dims) for t in model.config.input}
    bounds = {"min": 1, "max": model.config.max_batch_size}
    for which in ("min", "opt", "max"):
        profile = parse_profile(params[f"trt_profile_{which}_shapes"])
        assert set(profile) == set(dims), which
        for name, shape in profile.items():
            assert shape[1:] == dims[name], (which, name)  # TensorRT profiles need every dim fixed
            assert 1 <= shape[0] <= model.config.max_batch_size
            if which in bounds:
                assert shape[0] == bounds[which], (which, name)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
def test_the_shipped_config_is_what_the_trainer_writes(model):
    """A new export must be configured like the shipped repository: same writer, same text."""
    pytest.importorskip("torch")  # the trainer's exporters import it
    from popscore.trainer import image_encoder, text_export
    from popscore.trainer.export import config_pbtxt

    config = model.config
    if model.name == text_export.MODEL_NAME:
        written = text_export.config_pbtxt(config.input[0].dims[0], config.max_batch_size)
    elif model.name == image_encoder.MODEL_NAME:
        written = image_encoder.config_pbtxt(model.name, config.input[0].name, list(config.input[0].dims),
                                             config.output[0].name, config.output[0].dims[0], config.max_batch_size)
    else:
        kind = model_kind(model.name)
        meta = json.loads((model.path / str(model.versions[-1]) / "metadata.json").read_text())
        written = config_pbtxt(model.name, kind, F.FeatureSpec.from_dict(meta["feature_spec"]),
                               config.max_batch_size, meta["model_config"]["d_model"])
    assert (model.path / "config.pbtxt").read_text() == written


def test_the_embedded_mirror_of_the_same_repository_is_cpu_only(tmp_path):
    mirrored = build_python_backend_repository(MODEL_REPO, tmp_path)
    assert {m.name for m in mirrored} == {m.name for m in MODELS}
    assert any(m.config.HasField("optimization") for m in MODELS)  # so the next check checks something
    for model in MODELS:
        config = read_config(tmp_path / model.name / "config.pbtxt")
        assert config.backend == "python" and not config.platform
        assert [g.kind for g in config.instance_group] == [mc.ModelInstanceGroup.KIND_CPU], model.name
        assert not config.HasField("optimization"), f"{model.name}: GPU accelerators left in the CPU mirror"
        # what the worker sends and reads, and the batching, stay as written
        assert list(config.input) == list(model.config.input) and list(config.output) == list(model.config.output)
        assert config.dynamic_batching == model.config.dynamic_batching
        assert config.max_batch_size == model.config.max_batch_size


def test_the_dashboard_shows_triton_up_for_every_served_model():
    """The encoder's series (model="text_encoder", platform="all") must not be filtered out of the Triton panel."""
    dashboard = (REPO / "deploy" / "grafana" / "dashboards" / "popscore.json").read_text()
    panels = json.loads(dashboard)["panels"]
    exprs = [t["expr"] for p in panels for t in p.get("targets", []) if "popscore_triton_up" in t.get("expr", "")]
    assert exprs, "no dashboard panel shows popscore_triton_up"
    selectors = [e.split("popscore_triton_up", 1)[1].split("}", 1)[0] if e.split("popscore_triton_up", 1)[1][:1] == "{"
                 else "" for e in exprs]
    # the replica variable may narrow the series; nothing may filter models or platforms out
    assert not any("model" in s or "platform" in s for s in selectors), exprs
