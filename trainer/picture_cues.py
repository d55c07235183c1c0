"""Low-level picture cues (issue 20's study): numbers computed straight from the decoded pixels, the kind that
Khosla et al. ("What makes an image popular?", WWW 2014) found to carry some popularity signal and that a
frozen ImageNet encoder, which sees a centre crop normalised for object recognition, may not pass on: the
picture's shape and stored size, brightness, contrast, colourfulness, saturation, edge density, the share of
near-white and near-black pixels (the plain caption panels of memes) and the number of stacked panels.

Every cue is a pure function of an RGB uint8 array [H, W, 3] (Pillow decodes, numpy computes: no model). The
data set's pictures were resized so the shorter side is 256 px (smaller ones kept their size), so the stored
width and height say the aspect ratio and whether the original was small, not the original's resolution.
Per file the cue vector is cached under ``.popscore/cache/picture-cues/<CUES_VERSION>/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

CUES_VERSION = "v1"  # bump when a cue's definition changes: the cache is keyed by it
CUE_NAMES = ("aspect_ratio", "stored_width", "stored_height", "brightness", "contrast", "colourfulness",
             "saturation", "edge_density", "near_white_share", "near_black_share", "uniform_row_share",
             "horizontal_panels")
NEAR_WHITE_LUMA = 235.0
NEAR_BLACK_LUMA = 20.0
NEAR_WHITE_MAX_SATURATION = 0.1
EDGE_GRADIENT = 40.0  # luma units per pixel: a step that large is an edge (letters, outlines), not shading
UNIFORM_ROW_STD = 6.0  # luma standard deviation below which a pixel row is one flat colour
MIN_PANEL_SHARE = 0.08  # a panel is at least this share of the picture's height


def luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma, 0-255."""
    rgb = rgb.astype(np.float64)
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def colourfulness(rgb: np.ndarray) -> float:
    """Hasler and Suesstrunk's colourfulness (2003): the spread and mean of the red-green and yellow-blue
    opponent channels, sqrt(sd_rg^2 + sd_yb^2) + 0.3 sqrt(mean_rg^2 + mean_yb^2). 0 for any grey picture."""
    rgb = rgb.astype(np.float64)
    rg = rgb[..., 0] - rgb[..., 1]
    yb = 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation per pixel, 0-1 ((max - min) / max; 0 for black)."""
    rgb = rgb.astype(np.float64)
    hi, lo = rgb.max(-1), rgb.min(-1)
    return np.where(hi > 0, (hi - lo) / np.maximum(hi, 1e-9), 0.0)


def edge_density(grey: np.ndarray, threshold: float = EDGE_GRADIENT) -> float:
    """Share of pixels whose luma gradient (forward differences, both directions) exceeds ``threshold``:
    high for text and line drawings, low for smooth photographs."""
    if min(grey.shape) < 2:
        return 0.0
    gx = np.abs(np.diff(grey, axis=1))[:-1, :]
    gy = np.abs(np.diff(grey, axis=0))[:, :-1]
    return float(np.mean(np.hypot(gx, gy) > threshold))


def uniform_rows(grey: np.ndarray, max_std: float = UNIFORM_ROW_STD) -> np.ndarray:
    """[H] bool: rows of (nearly) one colour, e.g. the white strip of a caption panel or a separator."""
    return grey.std(axis=1) < max_std


def horizontal_panels(grey: np.ndarray, max_std: float = UNIFORM_ROW_STD,
                      min_share: float = MIN_PANEL_SHARE) -> int:
    """Runs of non-uniform rows at least ``min_share`` of the height tall, i.e. picture panels stacked
    vertically and separated by flat strips (a plain photo: 1; a four-panel comic on white: 4)."""
    busy = ~uniform_rows(grey, max_std)
    min_rows = max(1, int(np.ceil(min_share * len(busy))))
    panels, run = 0, 0
    for b in np.append(busy, False):
        if b:
            run += 1
        else:
            panels += run >= min_rows
            run = 0
    return int(panels)


def picture_cues(rgb: np.ndarray) -> np.ndarray:
    """[len(CUE_NAMES)] float64 for one RGB uint8 picture [H, W, 3], in ``CUE_NAMES`` order."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB array [H, W, 3], got shape {rgb.shape}")
    h, w = rgb.shape[:2]
    grey = luma(rgb)
    sat = saturation(rgb)
    cues = {
        "aspect_ratio": w / h, "stored_width": float(w), "stored_height": float(h),
        "brightness": grey.mean() / 255.0, "contrast": grey.std() / 255.0, "colourfulness": colourfulness(rgb),
        "saturation": sat.mean(), "edge_density": edge_density(grey),
        "near_white_share": np.mean((grey >= NEAR_WHITE_LUMA) & (sat <= NEAR_WHITE_MAX_SATURATION)),
        "near_black_share": np.mean(grey <= NEAR_BLACK_LUMA),
        "uniform_row_share": uniform_rows(grey).mean(), "horizontal_panels": float(horizontal_panels(grey)),
    }
    return np.array([float(cues[name]) for name in CUE_NAMES])


def read_rgb(path: Path | str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def cues_of_files(paths: Sequence[Path | str], cache_dir: Path | None = None) -> np.ndarray:
    """Picture files -> [N, len(CUE_NAMES)], cached per file content (the image encoder's embedding cache)."""
    from popscore.trainer.encoders import CACHE_DIR
    from popscore.trainer.image_encoder import cached_file_embeddings

    arrays = cached_file_embeddings(paths, cache_dir or CACHE_DIR, "picture-cues", CUES_VERSION,
                                    lambda batch: [picture_cues(read_rgb(p)) for p in batch])
    return np.stack(arrays).astype(np.float64) if arrays else np.zeros((0, len(CUE_NAMES)))
