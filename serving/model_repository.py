"""Reading the Triton model repository and deriving the Python-backend copy the embedded Triton serves.

``model_repo/`` is written for production Triton (``platform: "onnxruntime_onnx"``). The embedded
tritonserver has only the Python backend, so ``build_python_backend_repository`` mirrors it: the same
config with ``backend: "python"``, and per version a symlink to the very same ``model.onnx`` beside a
copy of ``triton_python_wrapper.py``. Inputs, outputs, batching and version policy stay as written.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

WRAPPER = "triton_python_wrapper.py"


@dataclass(frozen=True)
class RepositoryModel:
    name: str
    config: model_config_pb2.ModelConfig
    versions: tuple[int, ...]
    path: Path


def read_config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def list_models(repository: Path) -> list[RepositoryModel]:
    models = []
    for config_path in sorted(repository.glob("*/config.pbtxt")):
        model_dir = config_path.parent
        config = read_config(config_path)
        versions = tuple(sorted(int(p.name) for p in model_dir.iterdir()
                                if p.is_dir() and p.name.isdigit() and (p / "model.onnx").exists()))
        models.append(RepositoryModel(config.name or model_dir.name, config, versions, model_dir))
    return models


def version_metadata(model: RepositoryModel, version: int) -> dict:
    """The trainer's ``metadata.json`` of a version (metrics, data window, feature spec); {} if absent."""
    path = model.path / str(version) / "metadata.json"
    return json.loads(path.read_text()) if path.exists() else {}


def python_backend_config(config: model_config_pb2.ModelConfig) -> model_config_pb2.ModelConfig:
    wrapped = model_config_pb2.ModelConfig()
    wrapped.CopyFrom(config)
    wrapped.ClearField("platform")
    wrapped.ClearField("default_model_filename")
    wrapped.ClearField("optimization")  # GPU execution accelerators are meaningless for the wrapper
    wrapped.backend = "python"
    del wrapped.instance_group[:]
    wrapped.instance_group.add(count=1, kind=model_config_pb2.ModelInstanceGroup.KIND_CPU)
    return wrapped


def build_python_backend_repository(source: Path, target: Path, only: list[str] | None = None
                                    ) -> list[RepositoryModel]:
    """Mirror ``source`` (or just the models named in ``only``) into ``target`` as Python-backend models."""
    wrapper = resources.files("popscore.serving").joinpath(WRAPPER).read_text()
    target.mkdir(parents=True, exist_ok=True)
    models = [m for m in list_models(source) if only is None or m.name in only]
    for model in models:
        out = target / model.name
        if out.exists():
            shutil.rmtree(out)
        out.mkdir()
        (out / "config.pbtxt").write_text(text_format.MessageToString(python_backend_config(model.config)))
        for version in model.versions:
            version_dir = out / str(version)
            version_dir.mkdir()
            (version_dir / "model.onnx").symlink_to((model.path / str(version) / "model.onnx").resolve())
            (version_dir / "model.py").write_text(wrapper)
    return models
