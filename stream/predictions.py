"""Model outputs -> ``prediction.v1`` records (pure; the hot path builds dicts, tests validate them)."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone

import numpy as np

from popscore.features import MODALITIES


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, timezone.utc).isoformat().replace("+00:00", "Z")


def prediction_records(post_ids: list[str], model: str, model_version: str, as_of: np.ndarray, horizon_s: int,
                       outputs: dict[str, np.ndarray], produced_at: float) -> list[dict]:
    """One record per row. Scores are in counter units (``expm1`` of the model's log1p output)."""
    log_score = outputs["log_score"].reshape(-1).astype(np.float64)
    interval = outputs.get("log_interval")
    weights = outputs.get("modality_weights")
    attention = outputs.get("time_attention")
    produced = _iso(produced_at)
    records = []
    for i, post_id in enumerate(post_ids):
        explanation: dict = {}
        if weights is not None:
            explanation["modality_weights"] = {m: round(float(w), 4) for m, w in zip(MODALITIES, weights[i])}
        if attention is not None:
            explanation["time_attention"] = [round(float(a), 4) for a in attention[i]]
        record = {
            "schema": "prediction.v1", "post_id": post_id, "model": model, "model_version": model_version,
            "as_of": _iso(float(as_of[i])), "horizon_s": int(horizon_s),
            "score": max(0.0, math.expm1(float(log_score[i]))), "log_score": float(log_score[i]),
            "explanation": explanation, "produced_at": produced,
        }
        if interval is not None:
            lo, hi = sorted(float(v) for v in interval[i])
            record["interval"] = [max(0.0, math.expm1(lo)), max(0.0, math.expm1(hi))]
        records.append(record)
    return records


def encode(record: dict) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode()


def latest_view(record: dict) -> dict:
    """The part of a prediction kept per post in Redis for ``/posts/{post_id}`` (the full record, with its
    explanation, is on the predictions topic)."""
    return {k: record[k] for k in ("model_version", "as_of", "score", "log_score", "interval") if k in record}
