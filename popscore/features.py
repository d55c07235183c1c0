"""THE feature code of popscore: one implementation used by the trainer (offline) and by the stream worker
(online), so there is no train/serve skew.

Everything here is pure and vectorised numpy. The stream worker holds, per post, a float64 array of shape
``[n_obs, 1 + len(COUNTER_NAMES)]`` = (observed_at epoch seconds, views, likes, comments, shares, favorites)
with NaN for counters the platform lacks, plus ``created_at`` (epoch seconds) and ``platform`` from the post
event. :func:`build_static_inputs` turns a batch of posts into the exact ONNX inputs of ``popscore_static``
and ``popscore_temporal_content`` (upload time, no observations); :func:`build_temporal_inputs` turns a
micro-batch of sequences (plus each post's cached content vector) into those of ``popscore_temporal``. The
trainer cuts its examples with the same functions (:func:`build_static_features`, :func:`build_sequence`).

Sequence resampling (right-aligned window, valid at any observation age ``t``):
    bin ``k`` of ``n_bins`` ends at age ``t - (n_bins - 1 - k) * bin_s``; its value is the last observation
    at or before that end (last value carried forward, 0 before the first observation), for every counter
    and for the popularity score ``sum_c w_c * count_c``. Channels per bin: ``log1p(cumulative)`` and
    ``signed_log1p(delta)`` for every counter and the score, then ``has_obs`` (an observation fell inside
    the bin). Bins that end before ``created_at`` are masked (``sequence_mask = 0``) and zero.
    Observations after ``as_of`` are ignored (no look-ahead). What is read of a sequence reaches back
    :func:`lookback_s` before ``as_of`` (the last observation at or before that, and everything after) plus the
    number of observations: the worker merges and reads only that tail of a long sequence (``n_earlier``).

The serving contract (ONNX input/output names, dtypes, shapes) is :func:`static_inputs`,
:func:`content_outputs`, :func:`temporal_inputs` and their siblings; the exporter writes them into
``config.pbtxt`` and the worker reads them from here.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from popscore.settings import COUNTER_NAMES

N_COUNTERS = len(COUNTER_NAMES)
TEXT_DIM = 384  # all-MiniLM-L6-v2 token states (and its pooled embedding)
VISUAL_DIM = 1280  # EfficientNet-Lite0 pooled features
AUDIO_DIM = 512  # aisfx block embedding
CONTENT_DIM = 64  # the fused post vector of MTAF-temporal (its d_model)
MODALITIES: tuple[str, ...] = ("content", "text", "visual", "audio")
"""Fusion order of the MTAF models; ``modality_mask`` and ``modality_weights`` follow it."""

KNOWN_PLATFORMS: tuple[str, ...] = ("hackernews", "reddit", "youtube")


@dataclass(frozen=True)
class FeatureSpec:
    """Everything that decides the shape and meaning of the model inputs. Its :meth:`hash` goes into every
    exported model's metadata; the worker must use the spec stored with the model it serves."""

    bin_s: float = 1800.0
    """Width of one sequence bin in seconds."""
    n_bins: int = 16
    """Number of fixed bins of the right-aligned window (16 x 30 min = the last 8 hours)."""
    counters: tuple[str, ...] = COUNTER_NAMES
    """Counters kept in the sequence, in storage order (must equal settings.COUNTER_NAMES)."""
    horizon_s: float = 7 * 24 * 3600.0
    """The target is log1p(score) at created_at + horizon_s (the last observation at or before it)."""
    train_ages_h: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 9.0, 12.0, 18.0, 24.0)
    """Observation ages at which training examples are cut."""
    eval_ages_h: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 12.0)
    """Observation ages reported in evaluation."""
    platforms: tuple[str, ...] = KNOWN_PLATFORMS
    version: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FeatureSpec":
        kw = dict(data)
        for key in ("counters", "train_ages_h", "eval_ages_h", "platforms"):
            if key in kw:
                kw[key] = tuple(kw[key])
        return cls(**kw)

    def hash(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def n_channels(self) -> int:
        return seq_channel_count(self)

    @property
    def static_dim(self) -> int:
        return len(static_feature_names(self))

    @property
    def dynamic_dim(self) -> int:
        return len(DYNAMIC_FEATURE_NAMES)


# --------------------------------------------------------------------------------------------- names/shapes


def seq_channel_names(spec: FeatureSpec) -> list[str]:
    names = [f"log1p_{c}" for c in spec.counters] + ["log1p_score"]
    names += [f"dlog_{c}" for c in spec.counters] + ["dlog_score"]
    return names + ["has_obs"]


def seq_channel_count(spec: FeatureSpec) -> int:
    return 2 * (len(spec.counters) + 1) + 1


_CONTENT_NAMES = [
    "hour_sin", "hour_cos", "dow_sin", "dow_cos",
    "log1p_title_chars", "log1p_title_words", "title_has_question", "log1p_description_chars", "log1p_tags",
    "log1p_images", "has_video", "has_audio", "log1p_duration_s",
    "has_author_stats", "log1p_followers", "log1p_following", "log1p_author_posts", "verified",
]  # fmt: skip


def static_feature_names(spec: FeatureSpec) -> list[str]:
    return [f"platform_{p}" for p in spec.platforms] + ["platform_other"] + _CONTENT_NAMES


DYNAMIC_FEATURE_NAMES: list[str] = [
    "log1p_age_h", "log1p_since_last_obs_h", "log1p_n_obs", "has_obs", "log1p_score_now", "dlog_score_last_h",
]  # fmt: skip


@dataclass(frozen=True)
class TensorSpec:
    name: str
    data_type: str  # Triton data type: TYPE_FP32 / TYPE_INT64
    dims: tuple[int, ...]  # without the batch dimension; -1 = variable

    @property
    def numpy_dtype(self) -> type:
        return {"TYPE_FP32": np.float32, "TYPE_INT64": np.int64}[self.data_type]


def static_inputs(spec: FeatureSpec) -> list[TensorSpec]:
    return [
        TensorSpec("static_features", "TYPE_FP32", (spec.static_dim,)),
        # The title's MiniLM token states (any number of tokens; padded ones masked): MTAF reads them
        # through word attention, whose weights are an output.
        TensorSpec("text_tokens", "TYPE_FP32", (-1, TEXT_DIM)),
        TensorSpec("text_token_mask", "TYPE_FP32", (-1,)),
        TensorSpec("visual_embedding", "TYPE_FP32", (VISUAL_DIM,)),
        TensorSpec("audio_embedding", "TYPE_FP32", (AUDIO_DIM,)),
        TensorSpec("modality_mask", "TYPE_FP32", (len(MODALITIES),)),
    ]


def content_inputs(spec: FeatureSpec) -> list[TensorSpec]:
    """``popscore_temporal_content`` reads what ``popscore_static`` reads: everything known at upload."""
    return static_inputs(spec)


def content_outputs(content_dim: int = CONTENT_DIM) -> list[TensorSpec]:
    return [
        TensorSpec("content_vector", "TYPE_FP32", (content_dim,)),  # the fused post vector the head reads
        TensorSpec("modality_weights", "TYPE_FP32", (len(MODALITIES),)),  # fusion attention, sums to 1
        TensorSpec("word_attention", "TYPE_FP32", (-1,)),  # attention over the title's tokens, sums to 1
    ]


def temporal_inputs(spec: FeatureSpec, content_dim: int = CONTENT_DIM) -> list[TensorSpec]:
    """``popscore_temporal`` (the per-snapshot head): the post's cached content vector plus the sequence."""
    return [
        TensorSpec("content_vector", "TYPE_FP32", (content_dim,)),
        TensorSpec("sequence", "TYPE_FP32", (spec.n_bins, spec.n_channels)),
        TensorSpec("sequence_mask", "TYPE_FP32", (spec.n_bins,)),
        TensorSpec("dynamic_features", "TYPE_FP32", (spec.dynamic_dim,)),
    ]


def static_outputs(spec: FeatureSpec) -> list[TensorSpec]:
    return [
        TensorSpec("log_score", "TYPE_FP32", (1,)),  # predicted log1p(score at horizon)
        TensorSpec("log_interval", "TYPE_FP32", (2,)),  # [q10, q90] of log1p(score at horizon)
        TensorSpec("modality_weights", "TYPE_FP32", (len(MODALITIES),)),  # fusion attention, sums to 1
        TensorSpec("word_attention", "TYPE_FP32", (-1,)),  # attention over the title's tokens, sums to 1
    ]


def temporal_outputs(spec: FeatureSpec) -> list[TensorSpec]:
    return [
        TensorSpec("log_score", "TYPE_FP32", (1,)),
        TensorSpec("log_interval", "TYPE_FP32", (2,)),
        TensorSpec("time_attention", "TYPE_FP32", (spec.n_bins,)),  # attention over bins, sums to 1
    ]


DEFAULT_SPEC = FeatureSpec()
STATIC_INPUTS = static_inputs(DEFAULT_SPEC)
TEMPORAL_INPUTS = temporal_inputs(DEFAULT_SPEC)
STATIC_OUTPUTS = static_outputs(DEFAULT_SPEC)
TEMPORAL_OUTPUTS = temporal_outputs(DEFAULT_SPEC)
MODEL_KINDS = ("static", "content", "temporal")
"""The served models of one platform's model set. ``content`` and ``temporal`` are the two halves of
MTAF-temporal, exported together with the same version number: the content half runs once per post and its
vector is cached with the post; the temporal half runs on every changed sequence."""
PLATFORM_NAME = re.compile(r"[a-z][a-z0-9]{0,31}")


def model_name(kind: str, platform: str) -> str:
    """The Triton name of ``kind`` in the model set trained for ``platform``: ``popscore_<platform>_<kind>``."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}")
    if not PLATFORM_NAME.fullmatch(platform):
        raise ValueError(f"a model set's platform is lowercase letters and digits, not {platform!r}")
    return f"popscore_{platform}_{'temporal_content' if kind == 'content' else kind}"


def model_tensors(kind: str, spec: FeatureSpec, content_dim: int = CONTENT_DIM) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """(inputs, outputs) of a served model of ``kind`` (``MODEL_KINDS``)."""
    if kind == "static":
        return static_inputs(spec), static_outputs(spec)
    if kind == "content":
        return content_inputs(spec), content_outputs(content_dim)
    if kind == "temporal":
        return temporal_inputs(spec, content_dim), temporal_outputs(spec)
    raise ValueError(f"unknown model kind {kind!r}")


# ------------------------------------------------------------------------------------------------ helpers


def weight_vector(weights: Mapping[str, float], counters: Sequence[str] = COUNTER_NAMES) -> np.ndarray:
    """Score weights (``ScoreSettings.weights_for(platform)``) as a vector in counter order."""
    unknown = set(weights) - set(counters)
    if unknown:
        raise ValueError(f"score weights name unknown counters: {sorted(unknown)}")
    return np.array([float(weights.get(c, 0.0)) for c in counters], dtype=np.float64)


def weight_matrix(platforms: Sequence[str], weights_for: Any, counters: Sequence[str] = COUNTER_NAMES) -> np.ndarray:
    """``[B, n_counters]`` weights; ``weights_for`` is a callable (``ScoreSettings().weights_for``) or a
    mapping platform -> weights."""
    get = weights_for if callable(weights_for) else weights_for.__getitem__
    index: dict[str, int] = {}
    codes = [index.setdefault(p, len(index)) for p in platforms]
    if not codes:
        return np.zeros((0, len(counters)))
    return np.stack([weight_vector(get(p), counters) for p in index])[codes]


def score_of(counts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Popularity score = sum_c w_c * count_c; a NaN counter with weight 0 is ignored, with weight > 0 it
    counts as 0 (the platform did not report it). ``counts`` [..., C], ``weights`` [C] or broadcastable."""
    return np.nansum(np.where(weights > 0, counts, 0.0) * weights, axis=-1)


GROWTH_WINDOW_S = 3600.0
"""The last dynamic feature (and the rising board) is the score's growth over this much time before ``as_of``."""


def lookback_s(spec: FeatureSpec) -> float:
    """How far before ``as_of`` the features read observations: the start of the first bin, or the growth
    window if longer. Features from the observations after the last one at or before ``as_of - lookback_s``
    (and the number of those before it) equal those from the whole sequence."""
    return max(spec.n_bins * spec.bin_s, GROWTH_WINDOW_S)


def signed_log1p(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


def _flat_rows(seqs: Sequence[np.ndarray], n_cols: int = 1 + N_COUNTERS) -> tuple[np.ndarray, np.ndarray]:
    """All sequences' rows in one table ``[R + 1, n_cols]`` whose last row is NaN, and ``[B, N]`` the row of
    each sequence's i-th observation in it (the NaN row past its end): padding without copying the counters.
    Rows keep their order; the caller sorts by time."""
    seqs = [np.asarray(s, dtype=np.float64) for s in seqs]
    for i, s in enumerate(seqs):
        if s.size and (s.ndim != 2 or s.shape[1] != n_cols):
            raise ValueError(f"sequence {i} has shape {s.shape}, expected [n_obs, {n_cols}]")
    lengths = np.array([len(s) if s.size else 0 for s in seqs], dtype=np.int64)
    flat = np.concatenate([s for s in seqs if s.size] + [np.full((1, n_cols), np.nan)])
    n = max(int(lengths.max(initial=0)), 1)
    slot = np.arange(n)[None, :]
    row_of = np.where(slot < lengths[:, None], (np.cumsum(lengths) - lengths)[:, None] + slot, len(flat) - 1)
    return flat, row_of


def _in_order(times: np.ndarray) -> bool:
    """Whether every row of ``times`` [B, N] is ascending (+inf padding last)."""
    return bool((times[:, 1:] >= times[:, :-1]).all())


def _last_at_or_before(times: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Last-observation lookup, batched: ``times`` [B, N] ascending (+inf padding), ``query`` [B, Q] -> the
    index [B, Q] of the last time <= each query, -1 where none is."""
    return (times[:, None, :] <= query[:, :, None]).sum(axis=2) - 1


# ------------------------------------------------------------------------------------------- the features


def build_sequence(
    spec: FeatureSpec,
    seqs: Sequence[np.ndarray],
    created_at: np.ndarray,
    as_of: np.ndarray,
    weights: np.ndarray,
    *,
    n_earlier: np.ndarray | None = None,
    chunk: int = 2048,
) -> dict[str, np.ndarray]:
    """Resampled early-popularity sequences and the observation-time scalars.

    ``seqs``: B arrays ``[n_obs, 1+C]``; ``created_at``, ``as_of``: [B] epoch seconds; ``weights``:
    [B, C] score weights; ``n_earlier``: [B] observations of each post before its array, which is then the
    tail of its sequence (the worker's merge returns the tail :func:`lookback_s` needs; None: whole sequences).
    Returns ``sequence`` [B, n_bins, n_channels] float32, ``sequence_mask`` [B, n_bins]
    float32, ``dynamic_features`` [B, dynamic_dim] float32 and ``score_now`` [B] float64 (the score at
    ``as_of``, for baselines)."""
    b = len(seqs)
    created_at = np.asarray(created_at, dtype=np.float64).reshape(b)
    as_of = np.asarray(as_of, dtype=np.float64).reshape(b)
    weights = np.asarray(weights, dtype=np.float64).reshape(b, len(spec.counters))
    n_earlier = np.zeros(b, np.int64) if n_earlier is None else np.asarray(n_earlier, dtype=np.int64).reshape(b)
    outs: dict[str, list[np.ndarray]] = {"sequence": [], "sequence_mask": [], "dynamic_features": [], "score_now": []}
    for lo in range(0, max(b, 1), chunk):
        hi = min(lo + chunk, b)
        if hi <= lo:
            break
        part = _build_sequence_chunk(spec, seqs[lo:hi], created_at[lo:hi], as_of[lo:hi], weights[lo:hi],
                                     n_earlier[lo:hi])
        for k, v in part.items():
            outs[k].append(v)
    if b == 0:
        return {
            "sequence": np.zeros((0, spec.n_bins, spec.n_channels), np.float32),
            "sequence_mask": np.zeros((0, spec.n_bins), np.float32),
            "dynamic_features": np.zeros((0, spec.dynamic_dim), np.float32),
            "score_now": np.zeros((0,), np.float64),
        }
    return {k: np.concatenate(v) for k, v in outs.items()}


def _build_sequence_chunk(spec, seqs, created_at, as_of, weights, n_earlier) -> dict[str, np.ndarray]:
    # Only the times are padded to [B, N]; the counters stay in one flat table and just the rows the bins read
    # are gathered from it, which spares copying every counter of every padded slot.
    flat, row_of = _flat_rows(seqs)  # row_of [B, N]: each padded slot's row of ``flat`` (its last row: NaN)
    times = flat[row_of, 0] - created_at[:, None]  # ages in seconds; padding and bad times are not finite
    age = as_of - created_at  # [B]
    times = np.where(np.isfinite(times) & (times <= age[:, None]), times, np.inf)  # drop look-ahead observations
    if not _in_order(times):
        order = np.argsort(times, axis=1, kind="stable")
        times = np.take_along_axis(times, order, axis=1)
        row_of = np.take_along_axis(row_of, order, axis=1)

    nb, w = spec.n_bins, spec.bin_s
    ends = age[:, None] - (nb - 1 - np.arange(nb))[None, :] * w  # [B, nb] ages of bin ends
    bounds = np.concatenate([ends[:, :1] - w, ends], axis=1)  # [B, nb+1]
    # The counters (and score) last observed at each bin bound and an hour before ``as_of``: only those rows
    # are read, so the work below does not grow with the length of the sequence.
    idx_all = _last_at_or_before(times, np.concatenate([bounds, (age - GROWTH_WINDOW_S)[:, None]], axis=1))
    rows = flat[np.take_along_axis(row_of, np.clip(idx_all, 0, None), axis=1), 1:]  # [B, nb+2, C]
    rows = np.where(np.isfinite(rows), rows, 0.0)
    vals = np.concatenate([rows, score_of(rows, weights[:, None, :])[:, :, None]], axis=2)  # [B, nb+2, C+1]
    vals = np.where((idx_all >= 0)[:, :, None], vals, 0.0)  # 0 where nothing was observed yet
    at, idx, prev_h = vals[:, :nb + 1], idx_all[:, :nb + 1], vals[:, nb + 1, -1]
    cum = at[:, 1:]
    delta = at[:, 1:] - at[:, :-1]
    has_obs = (idx[:, 1:] > idx[:, :-1]).astype(np.float64)
    mask = (ends >= 0).astype(np.float64)
    seq = np.concatenate([np.log1p(np.clip(cum, 0, None)), signed_log1p(delta), has_obs[:, :, None]], axis=2)
    seq *= mask[:, :, None]

    n_read = np.isfinite(times).sum(axis=1)
    last_t = np.where(n_read > 0, np.take_along_axis(times, np.clip(n_read - 1, 0, None)[:, None], axis=1)[:, 0], 0)
    n_obs = n_read + n_earlier
    since_last = np.where(n_read > 0, age - last_t, age)
    score_now = at[:, -1, -1]
    dyn = np.stack(
        [
            np.log1p(np.clip(age, 0, None) / 3600.0),
            np.log1p(np.clip(since_last, 0, None) / 3600.0),
            np.log1p(n_obs),
            (n_obs > 0).astype(np.float64),
            np.log1p(np.clip(score_now, 0, None)),
            signed_log1p(score_now - prev_h),
        ],
        axis=1,
    )
    return {
        "sequence": seq.astype(np.float32),
        "sequence_mask": mask.astype(np.float32),
        "dynamic_features": dyn.astype(np.float32),
        "score_now": score_now,
    }


def _get(obj: Any, *path: str) -> Any:
    """Read a field from a contract Post (pydantic) or its dict form; None when absent."""
    for key in path:
        if obj is None:
            return None
        if isinstance(obj, Mapping):
            obj = obj.get(key)
        else:
            obj = getattr(obj, key, None)
    return obj


def _epoch(value: Any) -> float:
    if value is None:
        return math.nan
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    return float(value)


def build_static_features(
    spec: FeatureSpec, created_at: np.ndarray, platforms: Sequence[str], posts: Sequence[Any] | None = None
) -> np.ndarray:
    """Content-agnostic features known at upload: platform one-hot, time of day/week (UTC), text and media
    statistics, author statistics. ``posts`` are contract ``Post`` objects or their dicts (or None: only
    time and platform are used). Returns [B, static_dim] float32."""
    created_at = np.asarray(created_at, dtype=np.float64)
    b = len(created_at)
    plat = np.zeros((b, len(spec.platforms) + 1))
    pidx = {p: i for i, p in enumerate(spec.platforms)}
    for i, p in enumerate(platforms):
        plat[i, pidx.get(p, len(spec.platforms))] = 1.0
    hour = (created_at % 86400.0) / 3600.0
    dow = ((created_at // 86400.0) + 3) % 7  # 1970-01-01 was a Thursday; 0 = Monday
    timef = np.stack(
        [np.sin(2 * np.pi * hour / 24), np.cos(2 * np.pi * hour / 24), np.sin(2 * np.pi * dow / 7), np.cos(2 * np.pi * dow / 7)],
        axis=1,
    )
    content = np.zeros((b, len(_CONTENT_NAMES) - 4))
    if posts is not None:
        for i, post in enumerate(posts):
            if post is None:
                continue
            title = _get(post, "text", "title") or ""
            desc = _get(post, "text", "description") or ""
            tags = _get(post, "text", "tags") or []
            images = _get(post, "media", "image_uris") or []
            duration = _get(post, "media", "duration_s")
            followers = _get(post, "author", "followers")
            following = _get(post, "author", "following")
            n_posts = _get(post, "author", "posts")
            verified = _get(post, "author", "verified")
            has_stats = any(v is not None for v in (followers, following, n_posts))
            content[i] = [
                math.log1p(len(title)),
                math.log1p(len(title.split())),
                float("?" in title),
                math.log1p(len(desc)),
                math.log1p(len(tags)),
                math.log1p(len(images)),
                float(_get(post, "media", "video_uri") is not None),
                float(_get(post, "media", "audio_uri") is not None),
                math.log1p(float(duration or 0.0)),
                float(has_stats),
                math.log1p(float(followers or 0)),
                math.log1p(float(following or 0)),
                math.log1p(float(n_posts or 0)),
                float(bool(verified)),
            ]
    return np.concatenate([plat, timef, content], axis=1).astype(np.float32)


def default_modality_mask(b: int, *, text: np.ndarray | bool = False, visual: np.ndarray | bool = False,
                          audio: np.ndarray | bool = False) -> np.ndarray:
    """[B, 4] mask in MODALITIES order; the content-agnostic vector is always present."""
    m = np.zeros((b, len(MODALITIES)), dtype=np.float32)
    m[:, 0] = 1.0
    m[:, 1] = np.broadcast_to(np.asarray(text, dtype=np.float32), (b,))
    m[:, 2] = np.broadcast_to(np.asarray(visual, dtype=np.float32), (b,))
    m[:, 3] = np.broadcast_to(np.asarray(audio, dtype=np.float32), (b,))
    return m


def embedding_inputs(
    b: int,
    text_tokens: np.ndarray | None = None,
    text_token_mask: np.ndarray | None = None,
    visual_embedding: np.ndarray | None = None,
    audio_embedding: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The content inputs and ``modality_mask`` for a batch of ``b`` posts. Missing ones are zero-filled and
    masked out: embeddings that are None or have a NaN row; a title that is None, has a NaN token state or
    no unmasked token. ``text_tokens`` [B, L, TEXT_DIM] is cut to the longest title in the batch (at least
    one token), so a batch of short titles sends short tensors."""
    out: dict[str, np.ndarray] = {}
    if text_tokens is None:
        out["text_tokens"] = np.zeros((b, 1, TEXT_DIM), np.float32)
        out["text_token_mask"] = np.zeros((b, 1), np.float32)
        text_ok = np.zeros(b, bool)
    else:
        tokens = np.asarray(text_tokens, dtype=np.float32).reshape(b, -1, TEXT_DIM)
        mask = np.asarray(text_token_mask, dtype=np.float32).reshape(b, tokens.shape[1]) > 0
        text_ok = mask.any(axis=1) & np.isfinite(tokens).all(axis=(1, 2))
        mask &= text_ok[:, None]
        used = np.flatnonzero(mask.any(axis=0))
        length = int(used[-1]) + 1 if len(used) else 1
        mask = mask[:, :length]
        out["text_tokens"] = np.where(mask[:, :, None], tokens[:, :length], 0.0).astype(np.float32)
        out["text_token_mask"] = mask.astype(np.float32)
    present = [text_ok]
    for name, emb, dim in (("visual_embedding", visual_embedding, VISUAL_DIM),
                           ("audio_embedding", audio_embedding, AUDIO_DIM)):
        if emb is None:
            out[name] = np.zeros((b, dim), np.float32)
            present.append(np.zeros(b, bool))
        else:
            emb = np.asarray(emb, dtype=np.float32).reshape(b, dim)
            ok = np.isfinite(emb).all(axis=1)
            out[name] = np.where(ok[:, None], emb, 0.0).astype(np.float32)
            present.append(ok)
    out["modality_mask"] = default_modality_mask(b, text=present[0], visual=present[1], audio=present[2])
    return out


def build_static_inputs(
    spec: FeatureSpec,
    created_at: np.ndarray,
    platforms: Sequence[str],
    posts: Sequence[Any] | None = None,
    *,
    text_tokens: np.ndarray | None = None,
    text_token_mask: np.ndarray | None = None,
    visual_embedding: np.ndarray | None = None,
    audio_embedding: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The ONNX inputs of ``popscore_static`` (and of ``popscore_temporal_content``) for a batch of posts."""
    created_at = np.asarray(created_at, dtype=np.float64)
    b = len(created_at)
    out = {"static_features": build_static_features(spec, created_at, platforms, posts)}
    out.update(embedding_inputs(b, text_tokens, text_token_mask, visual_embedding, audio_embedding))
    return out


def build_temporal_inputs(
    spec: FeatureSpec,
    seqs: Sequence[np.ndarray],
    created_at: np.ndarray,
    platforms: Sequence[str],
    weights_for: Any,
    as_of: np.ndarray,
    content_vector: np.ndarray,
    n_earlier: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The ONNX inputs of ``popscore_temporal`` for a micro-batch (the worker's entry point).

    ``seqs``: per post the stored ``[n_obs, 1+5]`` float64 array; ``created_at``/``as_of``: [B] epoch seconds
    (``as_of`` = the prediction time, usually the latest observed_at); ``weights_for``: callable platform ->
    weights (``ScoreSettings().weights_for``) or a mapping; ``content_vector``: [B, d] from
    ``popscore_temporal_content``, computed once per post; ``n_earlier``: as in :func:`build_sequence`."""
    w = weight_matrix(platforms, weights_for, spec.counters)
    seq = build_sequence(spec, seqs, created_at, as_of, w, n_earlier=n_earlier)
    out = {"content_vector": np.ascontiguousarray(content_vector, dtype=np.float32)}
    out.update({k: seq[k] for k in ("sequence", "sequence_mask", "dynamic_features")})
    return out


def target_log_score(
    spec: FeatureSpec, seqs: Sequence[np.ndarray], created_at: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """Training target: log1p(score at created_at + horizon), the last observation at or before it.
    NaN when the post has no observation before the horizon."""
    created_at = np.asarray(created_at, dtype=np.float64)
    b = len(created_at)
    res = build_sequence(
        FeatureSpec(bin_s=1.0, n_bins=1, counters=spec.counters, horizon_s=spec.horizon_s),
        seqs, created_at, created_at + spec.horizon_s, weights,
    )  # fmt: skip
    has = res["dynamic_features"][:, 3] > 0
    out = np.log1p(np.clip(res["score_now"], 0, None))
    return np.where(has, out, np.nan) if b else out


def spec_from_metadata(path: Any) -> FeatureSpec:
    """The FeatureSpec a served model was trained with: ``path`` is a version's metadata.json, a version
    directory, or a model directory (its highest numbered version). The worker must build inputs with it."""
    from pathlib import Path

    p = Path(path)
    if p.is_dir() and not (p / "metadata.json").exists():
        versions = sorted((int(d.name) for d in p.iterdir() if d.is_dir() and d.name.isdigit()), reverse=True)
        if not versions:
            raise FileNotFoundError(f"no numbered version under {p}")
        p = p / str(versions[0])
    if p.is_dir():
        p = p / "metadata.json"
    meta = json.loads(p.read_text())
    spec = FeatureSpec.from_dict(meta["feature_spec"])
    if meta.get("feature_spec_hash") not in (None, spec.hash()):
        raise ValueError(f"{p}: feature_spec_hash {meta['feature_spec_hash']} does not match its spec ({spec.hash()})")
    return spec
