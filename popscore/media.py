"""A post's pictures, from its media fields to the image encoder's input: inline images (base64), references read
through a media store (local files under allow-listed roots; any reader with the same ``read`` can stand in, an
object store say), and a video's frames. Decoding is Pillow's, bounded in bytes before it and in pixels before the
pixels are decoded (a picture's header names its size), so a hostile or broken picture costs bounded work.

A picture that cannot be used raises :class:`MediaProblem` with one of :data:`REASONS`; the worker then scores the
post without the visual modality and reports the reason (metric, flag and ``explanation.media_problem`` on the
prediction). Nothing here decides about the post itself.

:func:`preprocess_image` is the image encoder's preprocessing (timm's eval transform for EfficientNet-Lite0); the
trainer imports it from here, so trainer and worker feed the encoder the same tensors.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence
from urllib.parse import unquote, urlparse

import numpy as np

IMAGE_SIZE = 224
RESIZE_SHORT = 256  # floor(224 / 0.875): timm's crop_pct for tf_efficientnet_lite0
MEAN = STD = 0.5

UNDECODABLE, OVERSIZED, MISSING, DISALLOWED = "undecodable", "oversized", "missing", "disallowed"
REASONS: tuple[str, ...] = (UNDECODABLE, OVERSIZED, MISSING, DISALLOWED)
"""Why a post's picture was not used: not base64 or not a picture Pillow reads; more bytes or pixels than the
limits; a reference to no file; a reference outside the allow-listed roots (or of a scheme no store reads)."""


class MediaProblem(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class MediaStore(Protocol):
    def read(self, uri: str, max_bytes: int) -> bytes:
        """The referenced file's bytes; :class:`MediaProblem` (missing, disallowed, oversized) otherwise."""


class LocalMediaStore:
    """``file://`` references to files under allow-listed directories. The path is resolved (``..`` and symlinks
    followed) before the check, so a reference cannot leave the roots."""

    def __init__(self, roots: Sequence[Path]) -> None:
        self.roots = [Path(r).resolve() for r in roots]

    def read(self, uri: str, max_bytes: int) -> bytes:
        parsed = urlparse(uri)
        if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
            raise MediaProblem(DISALLOWED, f"no media store reads {parsed.scheme}:// references")
        path = Path(unquote(parsed.path)).resolve()
        if not any(path.is_relative_to(root) for root in self.roots):
            raise MediaProblem(DISALLOWED, "the file is not under an allow-listed media root")
        try:
            with path.open("rb") as f:
                data = f.read(max_bytes + 1)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise MediaProblem(MISSING, "no such file") from None
        except OSError as exc:
            raise MediaProblem(MISSING, f"cannot read it: {exc.strerror}") from None
        if len(data) > max_bytes:
            raise MediaProblem(OVERSIZED, f"the file has more than {max_bytes} bytes")
        return data


def decode_inline(text: str, max_bytes: int) -> bytes:
    if len(text) > (max_bytes + 2) // 3 * 4 + 4:
        raise MediaProblem(OVERSIZED, f"the inline image has more than {max_bytes} bytes")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise MediaProblem(UNDECODABLE, "the inline image is not base64") from None
    if len(data) > max_bytes:
        raise MediaProblem(OVERSIZED, f"the inline image has more than {max_bytes} bytes")
    return data


def decode_image(data: bytes, max_pixels: int):
    """A picture's bytes -> an RGB PIL image, its size checked from the header before its pixels are decoded."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise MediaProblem(OVERSIZED, f"{w}x{h} pixels, more than {max_pixels}")
            if w < 1 or h < 1:
                raise MediaProblem(UNDECODABLE, f"an empty {w}x{h} picture")
            img.load()
            return img.convert("RGB")
    except MediaProblem:
        raise
    except Exception as exc:  # noqa: BLE001  Pillow raises many types on broken input; each means undecodable
        raise MediaProblem(UNDECODABLE, f"not a picture Pillow decodes ({type(exc).__name__})") from None


def preprocess_image(image: Any) -> np.ndarray:
    """A PIL image or an HxW / HxWx3 / HxWx4 uint8 array (e.g. a decoded video frame) -> float32 [3, 224, 224]:
    RGB, bicubic resize of the shorter side to 256, centre crop 224, (x / 255 - 0.5) / 0.5. The same arithmetic
    as timm's eval transform (torchvision Resize + CenterCrop + ToTensor + Normalize) on PIL images."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ValueError(f"expected an HxW or HxWxC uint8 array, got {image.dtype} {image.shape}")
        image = Image.fromarray(image)
    img = image.convert("RGB")
    w, h = img.size
    if min(w, h) < 1:
        raise ValueError(f"empty image {w}x{h}")
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = RESIZE_SHORT, int(RESIZE_SHORT * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    img = img.resize((new_w, new_h), Image.BICUBIC)
    top, left = int(round((new_h - IMAGE_SIZE) / 2.0)), int(round((new_w - IMAGE_SIZE) / 2.0))
    img = img.crop((left, top, left + IMAGE_SIZE, top + IMAGE_SIZE))
    x = np.asarray(img, dtype=np.float32) / 255.0
    return ((x - MEAN) / STD).transpose(2, 0, 1).copy()


def thumbnail_jpeg(image, max_px: int) -> bytes:
    """A small JPEG of the picture (longest side ``max_px``): what the heat map is computed on and drawn over.
    JPEG, not PNG: encoding a PNG costs tens of milliseconds per picture on the post path."""
    thumb = image.copy()
    thumb.thumbnail((max_px, max_px))
    out = io.BytesIO()
    thumb.save(out, format="JPEG", quality=90)
    return out.getvalue()


def has_pictures(media) -> bool:
    """Whether a post's media (``popscore.contract.Media``) carries anything for the visual modality."""
    return bool(media.frames) or media.image is not None or bool(media.image_uris)


@dataclass
class PostPictures:
    """A post's pictures, preprocessed for the encoder (one, or a video's frames, pooled after encoding), and the
    thumbnail of its first one."""

    pictures: list[np.ndarray]
    thumbnail: bytes
    is_video: bool


def load_pictures(media, store: MediaStore, max_bytes: int, max_pixels: int, thumbnail_px: int) -> PostPictures:
    """The pictures of a post that ``has_pictures``: its frames, else its inline image, else its first image
    reference. Any unusable frame rejects the whole video (:class:`MediaProblem`): a pooled embedding of some of
    its frames would describe another video."""
    if media.frames:
        sources = [(f.image, f.uri) for f in media.frames]
    elif media.image is not None:
        sources = [(media.image, None)]
    else:
        sources = [(None, media.image_uris[0])]
    images = []
    for inline, uri in sources:
        data = decode_inline(inline, max_bytes) if inline is not None else store.read(uri, max_bytes)
        images.append(decode_image(data, max_pixels))
    return PostPictures([preprocess_image(img) for img in images], thumbnail_jpeg(images[0], thumbnail_px),
                        bool(media.frames))
