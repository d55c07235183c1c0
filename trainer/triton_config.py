"""How production Triton runs each exported model on its GPU: the ``config.pbtxt`` sections after the tensors.

Every exporter (scoring heads, text encoder, media encoders) ends its config with ``serving_sections`` so a new
export is configured like the shipped repository. Per model family:

- Scoring heads (``static``, ``content``): CUDA execution provider, FP32. They are a few MLP layers over a
  dynamic token axis (``text_tokens`` is ``[-1, 384]``): TensorRT would build an engine per new token count
  or need a profile for every shape, for graphs whose cost is a handful of GEMMs. FP32 because their outputs
  are checked against the declared bounds and compared with the trainer's validation MAE.
- Temporal head (``temporal``): TensorRT, FP32, one optimisation profile over the batch axis. Its GRU is
  unrolled into ~700 small nodes (trainer/onnx_gru.py) with fixed shapes (16 steps): launch-bound on the CUDA
  EP, fused into a few kernels by TensorRT. FP32 because the GRU state is carried over 16 steps and the graph
  is not FLOP-bound, so FP16 would buy little and cost accuracy.
- Text encoder: TensorRT, FP16 (LayerNorm kept in FP32), one profile over the batch axis at the fixed token
  length. A 6-layer transformer is FLOP-bound: FP16 tensor cores are the point of the GPU here.

Dynamic batching: the worker already sends one request per micro-batch, so Triton's batcher only merges the
requests of concurrent agents and replicas, and every microsecond it waits is added to a single record's
latency (docs/benchmarks.md: the queue delay shows up in p50 on paced records). The heads wait at most
``HEAD_QUEUE_DELAY_US``. The encoder waits ``ENCODER_QUEUE_DELAY_US``: its per-row cost is far higher and its
GPU throughput grows with batch size, so merging two replicas' titles is worth a little latency. Preferred
sizes are x4 steps up to ``max_batch_size`` (the TensorRT profile's optimum sits among them).

TensorRT engines are cached (``TRT_ENGINE_CACHE``) so a restart or a second instance reuses the built engine;
the directory is outside the read-only model repository. The embedded stack rewrites all of this for its CPU
(serving/model_repository.py ``python_backend_config``).
"""

from __future__ import annotations

from typing import Literal, Sequence

ModelFamily = Literal["head", "temporal_head", "encoder", "media_encoder"]

HEAD_QUEUE_DELAY_US = 100
ENCODER_QUEUE_DELAY_US = 500
TRT_ENGINE_CACHE = "/tmp/popscore_trt_cache"
TRT_WORKSPACE_BYTES = 1 << 30
INSTANCES_PER_GPU = 1  # one ORT session per GPU: batching fills it; a second mostly doubles engine memory


def preferred_batch_sizes(max_batch_size: int, smallest: int) -> list[int]:
    """``smallest``, then x4 steps, ending at ``max_batch_size`` (all <= it)."""
    sizes, size = [], min(smallest, max_batch_size)
    while size < max_batch_size:
        sizes.append(size)
        size *= 4
    return sizes + [max_batch_size]


def trt_profile(inputs: Sequence[tuple[str, Sequence[int]]], batch: int) -> str:
    """TensorRT profile shapes (``name:BxD1xD2,...``) for every input at batch size ``batch``."""
    return ",".join(f"{name}:{'x'.join(str(d) for d in [batch, *dims])}" for name, dims in inputs)


def _tensorrt(precision: str, inputs: Sequence[tuple[str, Sequence[int]]], max_batch_size: int,
              opt_batch: int, extra: dict[str, str] | None = None) -> str:
    params = {
        "precision_mode": precision,
        "max_workspace_size_bytes": str(TRT_WORKSPACE_BYTES),
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": TRT_ENGINE_CACHE,
        "trt_profile_min_shapes": trt_profile(inputs, 1),
        "trt_profile_opt_shapes": trt_profile(inputs, min(opt_batch, max_batch_size)),
        "trt_profile_max_shapes": trt_profile(inputs, max_batch_size),
        **(extra or {}),
    }
    body = "\n".join(f'      parameters {{ key: "{k}" value: "{v}" }}' for k, v in params.items())
    return ("optimization {\n  execution_accelerators {\n    gpu_execution_accelerator: [ {\n"
            f'      name: "tensorrt"\n{body}\n    }} ]\n  }}\n}}\n')


def serving_sections(family: ModelFamily, max_batch_size: int,
                     inputs: Sequence[tuple[str, Sequence[int]]]) -> str:
    """Dynamic batching, version policy, GPU instance group and execution accelerator of one model.
    ``inputs``: (name, dims without the batch axis) of each input, for TensorRT's profile shapes."""
    if family in ("encoder", "media_encoder"):
        sizes, delay = preferred_batch_sizes(max_batch_size, 16), ENCODER_QUEUE_DELAY_US
    else:
        sizes, delay = preferred_batch_sizes(max_batch_size, 64), HEAD_QUEUE_DELAY_US
    text = ("dynamic_batching {\n"
            f"  preferred_batch_size: [ {', '.join(str(s) for s in sizes)} ]\n"
            f"  max_queue_delay_microseconds: {delay}\n"
            "}\n"
            "version_policy: { latest: { num_versions: 1 } }\n"
            f"instance_group [ {{ count: {INSTANCES_PER_GPU}, kind: KIND_GPU }} ]\n")
    if family == "temporal_head":
        text += _tensorrt("FP32", inputs, max_batch_size, 256)
    elif family == "encoder":
        text += _tensorrt("FP16", inputs, max_batch_size, 64, {"trt_layer_norm_fp32_fallback": "1"})
    elif family == "media_encoder":  # convolutional encoders over fixed-size frames/blocks
        text += _tensorrt("FP16", inputs, max_batch_size, 16)
    return text
