"""Model outputs -> ``prediction.v1`` records (pure; the hot path builds dicts, tests validate them)."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import orjson

from popscore.features import MODALITIES

NO_FLAGS: tuple[str, ...] = ()


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, timezone.utc).isoformat().replace("+00:00", "Z")


def _iso_all(epoch_s: np.ndarray) -> list[str]:
    """``_iso`` of each; whole seconds (observation times are) in one numpy call instead of a datetime each."""
    epoch_s = np.asarray(epoch_s, dtype=np.float64)
    if np.isfinite(epoch_s).all() and (epoch_s == np.floor(epoch_s)).all():
        return [f"{s}Z" for s in np.datetime_as_string(epoch_s.astype("datetime64[s]"), unit="s").tolist()]
    return [_iso(float(t)) for t in epoch_s]


def prediction_records(post_ids: list[str], model: str, model_version: str, as_of: np.ndarray, horizon_s: int,
                       outputs: dict[str, np.ndarray], produced_at: float, *, model_name: str,
                       platforms: list[str], trained_for: str | None, flags: list[tuple[str, ...]] | None = None
                       ) -> list[dict]:
    """One record per row. Scores are in counter units (``expm1`` of the log1p output, which the caller has
    bounded: ``serving/output_bounds.py``). ``outputs["log_interval"]`` None gives ``"interval": null`` (the
    fallback has no calibrated interval). ``platforms`` and ``flags`` are per row. The explanation holds the
    modality weights, time-step attention and word attention (as [wordpiece, weight] pairs, when
    ``outputs["words"]`` names the tokens) that the outputs carry."""
    log_score = outputs["log_score"].reshape(-1).astype(np.float64)
    score = np.maximum(0.0, np.expm1(log_score)).tolist()
    intervals = None
    if outputs.get("log_interval") is not None:
        bounds = np.sort(outputs["log_interval"].astype(np.float64), axis=1)  # a crossed pair is reordered
        intervals = np.maximum(0.0, np.expm1(bounds)).tolist()
    weights = outputs.get("modality_weights")
    weights = None if weights is None else np.round(weights.astype(np.float64), 4).tolist()
    attention = outputs.get("time_attention")
    attention = None if attention is None else np.round(attention.astype(np.float64), 4).tolist()
    words = outputs.get("words")  # the title's wordpieces, where the model read the title
    word_weights = outputs.get("word_attention") if words is not None else None
    word_weights = None if word_weights is None else np.round(word_weights.astype(np.float64), 4).tolist()
    media_problem = outputs.get("media_problem")  # per row: why the post's picture was not used, or None
    frame_attention = outputs.get("frame_attention")  # per row: the weights of a video's frames, or None
    media_retry = outputs.get("media_retry")  # per row: the retry that read the post's picture (a replacement)
    as_of_iso = _iso_all(as_of)
    produced = _iso(produced_at)
    log_score = log_score.tolist()
    records = []
    for i, post_id in enumerate(post_ids):
        explanation: dict = {}
        if weights is not None:
            explanation["modality_weights"] = dict(zip(MODALITIES, weights[i]))
        if attention is not None:
            explanation["time_attention"] = attention[i]
        if word_weights is not None:
            explanation["word_attention"] = [[w, a] for w, a in zip(words[i], word_weights[i])]
        if media_problem is not None and media_problem[i] is not None:
            explanation["media_problem"] = media_problem[i]
        if frame_attention is not None and frame_attention[i] is not None:
            explanation["frame_attention"] = frame_attention[i]
        if media_retry is not None and media_retry[i] is not None:
            explanation["media_retry"] = media_retry[i]
        records.append({
            "schema": "prediction.v1", "post_id": post_id, "model": model, "model_version": model_version,
            "as_of": as_of_iso[i], "horizon_s": int(horizon_s), "score": score[i], "log_score": log_score[i],
            "interval": None if intervals is None else intervals[i], "explanation": explanation,
            "produced_at": produced, "model_name": model_name, "platform": platforms[i], "trained_for": trained_for,
            "flags": NO_FLAGS if flags is None else flags[i],
        })
    return records


def encode(record: dict) -> bytes:
    return orjson.dumps(record)


LATEST_VIEW_FIELDS = ("model_name", "model_version", "as_of", "score", "log_score", "interval", "flags", "explanation")


def latest_view(record: dict) -> dict:
    """The part of a prediction kept per post in Redis for ``/posts/{post_id}``, the explanation included so
    the post view can show it (a few hundred bytes: word and time attention)."""
    return {k: record[k] for k in LATEST_VIEW_FIELDS if k in record}
