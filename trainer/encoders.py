"""Offline content encoders. Text: the served title encoder (``model_repo/popscore_text_encoder/<n>/``, written
by ``popscore export-text-encoder``: all-MiniLM-L6-v2 as one ONNX file) run through onnxruntime on the tokens of
``popscore.text_encoding``, exactly what the stream worker sends to Triton, so training and serving see the
same numbers. Per title it gives the pooled embedding (the tree baseline's text features) and the token
states MTAF's word attention reads; both are cached on disk under .popscore/cache, keyed by the encoder file
and the titles. Without a served encoder the models train with the text modality masked.
The image (EfficientNet-Lite0) and audio (aisfx) encoders are in ``image_encoder.py`` and ``audio_encoder.py``;
the data sets here have titles only, so the shipped models see the visual and audio modalities masked."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from popscore.text_encoding import EMBEDDING_DIM
from popscore.trainer.data import TitleEncodings

CACHE_DIR = Path(os.environ.get("POPSCORE_CACHE_DIR", ".popscore/cache"))
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
    return served_text_encoder(model_repo) is not None and _onnx_runtime_available()


class OnnxTextEncoder:
    """The served ONNX title encoder run through onnxruntime on the tokens of popscore.text_encoding: exactly
    the tensors the stream worker sends to Triton, at the same fixed length."""

    def __init__(self, served: ServedTextEncoder, threads: int = 2) -> None:
        import onnxruntime as ort

        from popscore.text_encoding import TitleTokenizer

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(served.model), opts, providers=["CPUExecutionProvider"])
        self.tokenizer = TitleTokenizer.from_file(served.tokenizer, max_length=served.max_length)

    def encode(self, texts: Sequence[str], batch_size: int = 256, progress: bool = False) -> TitleEncodings:
        """Pooled embeddings, token states (float16, cut to the longest title) and their mask."""
        from tqdm import tqdm

        from popscore.text_encoding import OUTPUT_NAME, TOKEN_STATES_NAME

        texts = list(texts)
        length = self.tokenizer.max_length
        pooled = np.zeros((len(texts), EMBEDDING_DIM), np.float32)
        tokens = np.zeros((len(texts), length, EMBEDDING_DIM), np.float16)
        mask = np.zeros((len(texts), length), bool)
        for lo in tqdm(range(0, len(texts), batch_size), desc="titles (onnx)", disable=not progress, unit="batch"):
            encoded = self.tokenizer.encode(texts[lo:lo + batch_size])
            pooled_part, tokens_part = self.session.run([OUTPUT_NAME, TOKEN_STATES_NAME], encoded)
            n = len(pooled_part)
            pooled[lo:lo + n], tokens[lo:lo + n] = pooled_part, tokens_part
            mask[lo:lo + n] = encoded["attention_mask"] > 0
        used = np.flatnonzero(mask.any(axis=0))
        keep = int(used[-1]) + 1 if len(used) else 1
        return TitleEncodings(pooled, np.ascontiguousarray(tokens[:, :keep]), np.ascontiguousarray(mask[:, :keep]))


def title_wordpieces(texts: Sequence[str], model_repo: Path | None = None) -> list[list[str]]:
    """The wordpieces the served encoder reads per title ([CLS] ... [SEP], cut at its max length): what
    word-attention weights are over."""
    from popscore.text_encoding import TitleTokenizer

    served = served_text_encoder(model_repo)
    if served is None:
        raise FileNotFoundError(f"no {SERVED_TEXT_ENCODER} in {model_repo or DEFAULT_MODEL_REPO}")
    tokenizer = TitleTokenizer.from_file(served.tokenizer, served.max_length)
    return tokenizer.wordpieces(tokenizer.encode(texts))


def cached_title_encodings(texts: Sequence[str], cache_dir: Path = CACHE_DIR, progress: bool = False,
                           model_repo: Path | None = None) -> TitleEncodings:
    """The served text encoder's output for every title, in order. The distinct titles are encoded once and
    cached (three .npy files) keyed by the encoder file's sha256 and max length and by the hash of their
    sorted set, so any order or repetition of the same titles hits the cache and a new encoder never reuses
    an old cache. Raises if ``model_repo`` (default model_repo/) has no served text encoder."""
    texts = [t if isinstance(t, str) else "" for t in texts]
    uniq = sorted(set(texts))
    served = served_text_encoder(model_repo)
    if served is None:
        raise FileNotFoundError(f"no {SERVED_TEXT_ENCODER} in {model_repo or DEFAULT_MODEL_REPO}: "
                                "run `popscore export-text-encoder`")
    h = hashlib.sha256()
    h.update(f"onnx-{served.sha256[:16]}-len{served.max_length}".encode())
    for t in uniq:
        h.update(t.encode("utf-8", "replace"))
        h.update(b"\0")
    folder = Path(cache_dir) / f"titles-{served.sha256[:16]}-len{served.max_length}-{h.hexdigest()[:20]}"
    parts = ("pooled", "tokens", "mask")
    if all((folder / f"{p}.npy").exists() for p in parts):
        enc = TitleEncodings(*(np.load(folder / f"{p}.npy") for p in parts))
    else:
        enc = OnnxTextEncoder(served).encode(uniq, progress=progress)
        tmp = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")  # one per process: runs may overlap
        tmp.mkdir(parents=True, exist_ok=True)
        for p in parts:
            np.save(tmp / f"{p}.npy", getattr(enc, p))
        try:
            tmp.replace(folder)  # the cache entry appears complete or not at all
        except OSError:  # another process wrote the same entry meanwhile: theirs is as good
            shutil.rmtree(tmp, ignore_errors=True)
    pos = {t: i for i, t in enumerate(uniq)}
    return enc.take(np.array([pos[t] for t in texts], dtype=np.int64))
