"""Whole-picture views and mid-level features of the frozen EfficientNet-Lite0 (issue 20's study of what the
224-px centre crop misses).

The served preprocessing (:func:`popscore.media.preprocess_image`) resizes the shorter side to 256 and keeps the
central 224 x 224: of a tall meme (three stacked panels, 256 x 800 as stored) it keeps the middle 28 %, and the
caption lines at the top and bottom are what it cuts. Here every picture is seen, with the same frozen encoder,
through :data:`VIEWS`:

- ``crop``: the served centre crop (its pooled 1280-d output equals the cached embedding: a check, not a new input);
- ``whole``: the whole picture letterboxed to 224 x 224 (longer side to 224, bicubic; the rest mid-grey, which is
  0 after the encoder's normalisation), nothing cut;
- ``top``, ``middle``, ``bottom``: the picture's horizontal thirds, each letterboxed the same way, so a caption
  band is seen at roughly the scale it has in the picture instead of being shrunk with the whole.

From each view two kinds of vector are kept: the encoder's pooled 1280-d output (ImageNet-class-like) and the
**mid-level** statistics of stages 4, 5 and 6 (112, 192 and 320 channels, at 1/16, 1/32 and 1/32 of the input):
the per-channel spatial mean and standard deviation (1,248 numbers). Those stages' outputs are linear projections
(signed), so GeM's power mean is not defined on them; the mean and standard deviation of feature maps are the
usual "style" statistics (Gatys et al., Huang and Belongie's AdaIN) and carry texture and layout more than object
classes. Everything is a pure function of the decoded picture; the per-file array [len(VIEWS), FEATURE_DIM] is
cached under ``.popscore/cache/image-views/<encoder version>-<VIEWS_VERSION>/``. Not a served input: the served
image encoder takes one centre crop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from popscore.media import IMAGE_SIZE, MEAN, STD, preprocess_image

VIEWS_VERSION = "views-v1"  # bump when a view or a statistic changes: the cache is keyed by it
VIEWS: tuple[str, ...] = ("crop", "whole", "top", "middle", "bottom")
TILES: tuple[str, ...] = ("top", "middle", "bottom")
PAD_VALUE = 128  # mid-grey: (128 / 255 - 0.5) / 0.5 ~ 0.004, what the occlusion maps use for "nothing here"
MID_STAGES: tuple[int, ...] = (4, 5, 6)  # EfficientNet-Lite0 stages (0-based, image_encoder.ARCH rows)
POOLED_DIM = 1280


def stage_ends() -> list[int]:
    """Index (into ``EfficientNetLite0.blocks``) of each stage's last block, from ``image_encoder.ARCH``."""
    from popscore.trainer.image_encoder import ARCH

    return list(np.cumsum([row[1] for row in ARCH]) - 1)


def mid_channels() -> list[int]:
    from popscore.trainer.image_encoder import ARCH

    return [ARCH[s][5] for s in MID_STAGES]


MID_DIM = 2 * 624  # mean and standard deviation of 112 + 192 + 320 channels
FEATURE_DIM = POOLED_DIM + MID_DIM


# --------------------------------------------------------------------------------------------- the views


def letterbox_box(width: int, height: int, size: int = IMAGE_SIZE) -> tuple[int, int, int, int]:
    """Where a ``width`` x ``height`` picture lands in a ``size`` square when its longer side is scaled to
    ``size`` and it is centred: (left, top, new width, new height); the rest is padding."""
    if width < 1 or height < 1:
        raise ValueError(f"empty picture {width}x{height}")
    scale = size / max(width, height)
    new_w, new_h = max(1, int(round(width * scale))), max(1, int(round(height * scale)))
    return (size - new_w) // 2, (size - new_h) // 2, new_w, new_h


def letterbox(image, size: int = IMAGE_SIZE, fill: int = PAD_VALUE) -> np.ndarray:
    """A PIL image -> uint8 [size, size, 3]: the whole picture, longer side scaled to ``size`` (bicubic), centred
    on a ``fill`` grey square. Nothing of the picture is cut."""
    from PIL import Image

    img = image.convert("RGB")
    left, top, new_w, new_h = letterbox_box(*img.size, size=size)
    canvas = Image.new("RGB", (size, size), (fill, fill, fill))
    canvas.paste(img.resize((new_w, new_h), Image.BICUBIC), (left, top))
    return np.asarray(canvas, dtype=np.uint8)


def tile_boxes(width: int, height: int, n: int = len(TILES)) -> list[tuple[int, int, int, int]]:
    """PIL crop boxes (left, upper, right, lower) of the picture's ``n`` horizontal bands, top to bottom: full
    width, heights as equal as integers allow, together exactly the picture."""
    if height < n:
        raise ValueError(f"a picture {height} px high has no {n} bands")
    edges = [int(round(k * height / n)) for k in range(n + 1)]
    return [(0, edges[k], width, edges[k + 1]) for k in range(n)]


def normalise(rgb: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [3, H, W], the encoder's (x / 255 - mean) / std."""
    x = rgb.astype(np.float32) / 255.0
    return ((x - MEAN) / STD).transpose(2, 0, 1).copy()


def view_inputs(image) -> np.ndarray:
    """A PIL image -> float32 [len(VIEWS), 3, 224, 224], the encoder's inputs in ``VIEWS`` order."""
    img = image.convert("RGB")
    out = {"crop": preprocess_image(img), "whole": normalise(letterbox(img))}
    for name, box in zip(TILES, tile_boxes(*img.size)):
        out[name] = normalise(letterbox(img.crop(box)))
    return np.stack([out[v] for v in VIEWS])


# --------------------------------------------------------------------------------------------- the encoder


class MidLevelEncoder(nn.Module):
    """The frozen EfficientNet-Lite0 read at two depths: forward -> [batch, FEATURE_DIM] = the pooled 1280-d
    output (as :class:`EfficientNetLite0.forward`) followed by the spatial mean and standard deviation of each
    ``MID_STAGES`` stage's output (means of all stages first, then the standard deviations)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        ends = stage_ends()
        self.taps = {ends[s]: k for k, s in enumerate(MID_STAGES)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.backbone
        x = b.stem(x)
        means, stds = [], []
        for i, block in enumerate(b.blocks):
            x = block(x)
            if i in self.taps:
                means.append(x.mean(dim=(2, 3)))
                stds.append(x.std(dim=(2, 3), unbiased=False))
        pooled = b.head(x).mean(dim=(2, 3))
        return torch.cat([pooled, *means, *stds], 1)


def encode_views(model: MidLevelEncoder, images: Sequence, batch_size: int = 40) -> list[np.ndarray]:
    """PIL images -> one float32 [len(VIEWS), FEATURE_DIM] array each."""
    stacked = np.concatenate([view_inputs(img) for img in images])
    out = []
    with torch.inference_mode():
        for lo in range(0, len(stacked), batch_size):
            out.append(model(torch.from_numpy(stacked[lo:lo + batch_size])).numpy())
    flat = np.concatenate(out) if out else np.zeros((0, FEATURE_DIM), np.float32)
    return list(flat.reshape(len(images), len(VIEWS), FEATURE_DIM))


def views_version() -> str:
    from popscore.trainer.image_encoder import encoder_version

    return f"{encoder_version()}-{VIEWS_VERSION}"


def view_features_of_files(paths: Sequence[Path | str], cache_dir: Path | None = None,
                           batch_size: int = 8) -> np.ndarray:
    """Picture files -> float32 [N, len(VIEWS), FEATURE_DIM], cached per file content, encoder and views
    version. Raises :class:`popscore.trainer.image_encoder.MediaDecodeError` naming an unreadable file."""
    from PIL import Image, UnidentifiedImageError

    from popscore.trainer.encoders import CACHE_DIR
    from popscore.trainer.image_encoder import MediaDecodeError, cached_file_embeddings, load_model

    holder: list[MidLevelEncoder] = []

    def compute(batch: list[Path]) -> list[np.ndarray]:
        images = []
        for p in batch:
            try:
                with Image.open(p) as img:
                    img.load()
                    images.append(img.convert("RGB"))
            except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
                raise MediaDecodeError(f"cannot decode image {p}: {exc}") from exc
        if not holder:
            holder.append(MidLevelEncoder(load_model()).eval())
        return encode_views(holder[0], images)

    arrays = cached_file_embeddings(paths, cache_dir or CACHE_DIR, "image-views", views_version(), compute,
                                    batch_size)
    return np.stack(arrays) if arrays else np.zeros((0, len(VIEWS), FEATURE_DIM), np.float32)


def view_blocks(features: np.ndarray) -> dict[str, np.ndarray]:
    """[N, len(VIEWS), FEATURE_DIM] -> the study's inputs, float64 [N, d] each:
    ``whole`` the letterboxed picture's pooled 1280-d; ``tiles`` the three bands' pooled outputs, their mean and
    their element-wise max (2,560-d: a caption band's strongest activations survive the max);
    ``mid`` the whole picture's mid-level statistics (1,248-d); ``views_mean`` the mean pooled 1280-d of the
    whole and the three bands (one 1280-d vector, the width the MTAF's visual input takes)."""
    f = features.astype(np.float64)
    idx = {v: k for k, v in enumerate(VIEWS)}
    pooled = f[:, :, :POOLED_DIM]
    tiles = pooled[:, [idx[t] for t in TILES]]
    return {
        "whole": pooled[:, idx["whole"]],
        "tiles": np.concatenate([tiles.mean(1), tiles.max(1)], 1),
        "mid": f[:, idx["whole"], POOLED_DIM:],
        "views_mean": pooled[:, [idx[v] for v in ("whole", *TILES)]].mean(1),
    }
