"""A post's pictures, from its media fields to the image encoder's input: inline images (base64), references read
through a media store (``file://`` files under allow-listed roots, ``s3://`` objects of allow-listed buckets of an
S3-compatible store; :func:`build_media_store` routes each scheme to its reader), and a video's frames. Decoding
is Pillow's, bounded in bytes before it and in pixels before the pixels are decoded (a picture's header names its
size), so a hostile or broken picture costs bounded work.

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
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence
from urllib.parse import unquote, urlparse

import numpy as np

from popscore.settings import MediaSettings

log = logging.getLogger(__name__)

IMAGE_SIZE = 224
RESIZE_SHORT = 256  # floor(224 / 0.875): timm's crop_pct for tf_efficientnet_lite0
MEAN = STD = 0.5

UNDECODABLE, OVERSIZED, MISSING, DISALLOWED = "undecodable", "oversized", "missing", "disallowed"
UNAVAILABLE = "unavailable"
REASONS: tuple[str, ...] = (UNDECODABLE, OVERSIZED, MISSING, DISALLOWED, UNAVAILABLE)
"""Why a post's picture was not used: not base64 or not a picture Pillow reads; more bytes or pixels than the
limits; a reference to no file or object; a reference outside the allow-listed roots or buckets (or of a scheme no
store reads); the store holding it did not answer in time, failed, or refused the worker's credentials (the picture
may well exist: a fault of the store or of its configuration, not of the post; added after the first four)."""


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


@dataclass(frozen=True)
class S3Object:
    bucket: str
    key: str


def parse_s3_uri(uri: str) -> S3Object:
    """``s3://bucket/key`` -> (bucket, key). The key is taken as written, without percent-decoding (as the AWS CLI
    reads its s3:// URIs). A key with ``.`` or ``..`` segments is disallowed: some S3-compatible stores resolve
    them as paths, which would leave an allow-listed prefix."""
    scheme, sep, rest = uri.partition("://")
    if scheme.lower() != "s3" or not sep:
        raise MediaProblem(DISALLOWED, f"not an s3:// reference: {scheme}://")
    bucket, _, key = rest.partition("/")
    if not bucket or not key:
        raise MediaProblem(DISALLOWED, "an s3:// reference names a bucket and a key: s3://bucket/key")
    if any(part in (".", "..") for part in key.split("/")):
        raise MediaProblem(DISALLOWED, "the key has . or .. segments")
    return S3Object(bucket, key)


def range_header(max_bytes: int) -> str:
    """The Range of a read of at most ``max_bytes``: one byte more, so that a larger object is seen to be larger
    without reading it whole."""
    return f"bytes=0-{max_bytes}"


def range_total(content_range: str | None) -> int | None:
    """The object's full size from a 206 answer's ``Content-Range: bytes 0-N/TOTAL``; None when not given."""
    if not content_range or "/" not in content_range:
        return None
    total = content_range.rsplit("/", 1)[1].strip()
    return int(total) if total.isdigit() else None


_MISSING_CODES = frozenset({"404", "NoSuchKey", "NoSuchBucket", "NotFound"})
_REFUSED_CODES = frozenset({"401", "403", "AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId",
                            "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "TokenRefreshRequired",
                            "AccountProblem"})


def client_error_reason(code: str, status: int) -> tuple[str, bool]:
    """(reason, whether the store itself is failing) of an S3 error answer that botocore's retries did not cure.
    No such key or bucket: missing. Credentials or policy refused: unavailable (the object may exist; the fix is
    the worker's configuration), without counting as an outage (it answers fast). 5xx and throttling:
    unavailable, an outage. Any other refusal of this one object (archived, a bad request): missing."""
    if code in _MISSING_CODES or status == 404 or code == "InvalidObjectState":  # or archived (Glacier)
        return MISSING, False
    if code in _REFUSED_CODES or status in (401, 403):
        return UNAVAILABLE, False
    if status >= 500 or status == 429 or code in ("SlowDown", "Throttling", "ThrottlingException",
                                                   "RequestTimeout", "ServiceUnavailable", "InternalError"):
        return UNAVAILABLE, True
    return MISSING, False


class S3MediaStore:
    """``s3://bucket/key`` references to objects of allow-listed buckets (and key prefixes) of an S3-compatible
    store, read with boto3 (credentials from the standard AWS chain).

    A read is one ranged GET of at most ``max_bytes`` + 1 bytes, its body read in chunks against a deadline, so
    neither a large object nor a slow one costs unbounded bytes or time. Connection errors, timeouts, throttling
    and 5xx are retried by botocore (standard mode, ``media.s3_attempts`` tries, jittered backoff); one still
    failing raises ``unavailable`` and opens a cool-down of ``media.s3_outage_cooldown_s`` during which references
    are rejected as unavailable without a request: a store outage costs the worker one bounded wait per cool-down
    instead of one per post, and is reported (reason, metric) rather than passed off as missing pictures."""

    def __init__(self, media: MediaSettings, *, client: Any = None, clock=time.monotonic) -> None:
        """The store ``media.s3_*`` describe; ``client``: an S3 client of one's own (tests: a stubbed one)."""
        self.allow = media.s3_allow_list()
        self.read_timeout_s = media.s3_read_timeout_s
        self.outage_cooldown_s = media.s3_outage_cooldown_s
        self.clock = clock
        self._down_until = float("-inf")
        self._down_detail = ""
        self._warned: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        if client is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError:  # pragma: no cover - the s3 extra is part of dev
                raise RuntimeError("media.s3_buckets is set but boto3 is not installed: install popscore[s3]") \
                    from None
            config = Config(connect_timeout=media.s3_connect_timeout_s, read_timeout=media.s3_read_timeout_s,
                            retries={"mode": "standard", "total_max_attempts": media.s3_attempts},
                            s3={"addressing_style": media.s3_addressing_style})
            client = boto3.session.Session().client("s3", endpoint_url=media.s3_endpoint_url,
                                                    region_name=media.s3_region, config=config)
        self.client = client

    def allowed(self, obj: S3Object) -> bool:
        return any(obj.bucket == bucket and obj.key.startswith(prefix) for bucket, prefix in self.allow)

    def read(self, uri: str, max_bytes: int) -> bytes:
        obj = parse_s3_uri(uri)
        if not self.allowed(obj):
            raise MediaProblem(DISALLOWED, "the object is not in an allow-listed bucket or key prefix")
        if self.clock() < self._down_until:
            raise MediaProblem(UNAVAILABLE, f"the object store is cooling down after an outage ({self._down_detail})")
        from botocore.exceptions import (BotoCoreError, ClientError, ConnectionError as BotoConnectionError,
                                         HTTPClientError)

        try:
            answer = self.client.get_object(Bucket=obj.bucket, Key=obj.key, Range=range_header(max_bytes))
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            if code == "InvalidRange" or status == 416:  # no byte 0: the object is empty
                return b""
            reason, outage = client_error_reason(code, status)
            detail = f"the store answered {status} {code}".strip()
            if outage:
                self._outage(detail)
            elif reason == UNAVAILABLE:
                self._warn_once(("refused", obj.bucket), f"the object store refuses the worker in bucket "
                                f"{obj.bucket} ({code}): check its credentials and policy")
            raise MediaProblem(reason, detail) from None
        except (BotoConnectionError, HTTPClientError) as exc:  # connect/read timeouts, refused, reset
            detail = f"the store could not be reached ({type(exc).__name__})"
            self._outage(detail)
            raise MediaProblem(UNAVAILABLE, detail) from None
        except BotoCoreError as exc:  # no credentials, a bad endpoint: configuration, answered at once
            self._warn_once(("config", type(exc).__name__), f"the object store cannot be asked: {exc}")
            raise MediaProblem(UNAVAILABLE, f"the store cannot be asked ({type(exc).__name__})") from None
        body = answer["Body"]
        try:
            total = range_total(answer.get("ContentRange"))
            if total is not None and total > max_bytes:
                raise MediaProblem(OVERSIZED, f"the object has {total} bytes, more than {max_bytes}")
            data = self._read_body(body, max_bytes + 1)
        except (BotoConnectionError, HTTPClientError, OSError) as exc:
            detail = f"the download failed ({type(exc).__name__})"
            self._outage(detail)
            raise MediaProblem(UNAVAILABLE, detail) from None
        finally:
            body.close()
        if len(data) > max_bytes:
            raise MediaProblem(OVERSIZED, f"the object has more than {max_bytes} bytes")
        return data

    def _read_body(self, body, limit: int) -> bytes:
        """At most ``limit`` bytes of the body (a server that ignores the Range is cut off there), within
        ``read_timeout_s`` for the whole download."""
        deadline = self.clock() + self.read_timeout_s
        chunks, size = [], 0
        while size < limit:
            chunk = body.read(min(65_536, limit - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if self.clock() > deadline and size < limit:
                raise TimeoutError(f"the download took more than {self.read_timeout_s} s")
        return b"".join(chunks)

    def _outage(self, detail: str) -> None:
        with self._lock:
            first = self.clock() >= self._down_until
            self._down_until = self.clock() + self.outage_cooldown_s
            self._down_detail = detail
        if first:
            log.warning("media store: %s; s3:// pictures are rejected as unavailable for %.0f s", detail,
                        self.outage_cooldown_s)

    def _warn_once(self, what: tuple[str, str], message: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning("media store: %s", message)


class RoutingMediaStore:
    """Several stores at once, each reading the references of its scheme (``file`` -> local, ``s3`` -> object
    store); a reference of any other scheme is disallowed."""

    def __init__(self, stores: Mapping[str, MediaStore]) -> None:
        self.stores = dict(stores)

    def read(self, uri: str, max_bytes: int) -> bytes:
        scheme = uri.partition("://")[0].lower() if "://" in uri else ""
        store = self.stores.get(scheme)
        if store is None:
            raise MediaProblem(DISALLOWED, f"no media store reads {scheme}:// references")
        return store.read(uri, max_bytes)


def build_media_store(media: MediaSettings) -> RoutingMediaStore:
    """The worker's media store from its settings: ``file://`` through the allow-listed roots (none: every such
    reference is disallowed), ``s3://`` through the allow-listed buckets when any are set."""
    stores: dict[str, MediaStore] = {"file": LocalMediaStore(media.roots)}
    if media.s3_buckets:
        stores["s3"] = S3MediaStore(media)
    return RoutingMediaStore(stores)


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
