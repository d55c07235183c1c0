"""ONNX Runtime over the same model files Triton serves: the fallback when Triton is unavailable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from popscore.serving.model_repository import RepositoryModel


class LocalOnnxRuntime:
    def __init__(self, model: RepositoryModel, version: int, threads: int = 1) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        path = Path(model.path) / str(version) / "model.onnx"
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        self.name = model.name
        self.version = version
        self.output_names = [o.name for o in model.config.output]

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(self.output_names, inputs)))
