"""Triton Python-backend model that serves an ONNX file through ONNX Runtime.

The embedded tritonserver has only the Python backend, so ``popscore up`` copies this file next to
each ONNX version as ``model.py``. The requests of one ``execute`` call whose inputs agree in shape apart
from the batch dimension are concatenated into one ONNX Runtime run (the point of dynamic batching) and the
outputs split back per request; requests with another shape (a variable dimension such as a title's token
count) run as their own group. A group is run in slices of at most ``POPSCORE_ORT_MAX_ROWS`` rows (256): larger
slices' activations outgrow the CPU caches (docs/benchmarks.md has the figures).
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("POPSCORE_ORT_THREADS", "1"))
        self.session = ort.InferenceSession(
            os.path.join(version_dir, "model.onnx"), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.input_names = [i["name"] for i in config["input"]]
        self.output_names = [o["name"] for o in config["output"]]
        self.max_rows = int(os.environ.get("POPSCORE_ORT_MAX_ROWS", "256"))

    def execute(self, requests):
        per_request = [
            {name: pb_utils.get_input_tensor_by_name(r, name).as_numpy() for name in self.input_names}
            for r in requests
        ]
        groups = {}
        for index, inputs in enumerate(per_request):
            groups.setdefault(tuple(inputs[name].shape[1:] for name in self.input_names), []).append(index)
        responses = [None] * len(requests)
        for members in groups.values():
            sizes = [len(per_request[i][self.input_names[0]]) for i in members]
            batch = per_request[members[0]] if len(members) == 1 else {
                name: np.concatenate([per_request[i][name] for i in members]) for name in self.input_names}
            outputs = self._run(batch, sum(sizes))
            start = 0
            for index, size in zip(members, sizes):
                tensors = [
                    pb_utils.Tensor(name, np.ascontiguousarray(out[start:start + size]))
                    for name, out in zip(self.output_names, outputs)
                ]
                responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)
                start += size
        return responses

    def _run(self, batch, rows):
        """``session.run`` over slices of at most ``max_rows`` rows, the outputs joined again."""
        if rows <= self.max_rows:
            return self.session.run(self.output_names, batch)
        parts = [self.session.run(self.output_names, {name: value[start:start + self.max_rows]
                                                      for name, value in batch.items()})
                 for start in range(0, rows, self.max_rows)]
        return [np.concatenate(outs) for outs in zip(*parts)]
