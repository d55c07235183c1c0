"""Online accuracy: each prediction compared with the score the post really reached at the horizon.

While a post is live, the first prediction of each model at each evaluation age (``age <= a < age + tolerance``,
the static model at age 0) is kept in the post's hash (``redis_schema.eval_field``). A sorted set orders posts
by the moment they mature (created_at + horizon). The stream's clock is the latest ``observed_at`` seen, so a
replay of old data matures posts as its event time advances. A matured post's realised log1p(score at the
horizon) is computed with the trainer's own target function from its stored sequence, compared with each kept
prediction, and the pairs feed a sliding window per (model, version, age) from which live MAE and Spearman
correlation are exported, labelled by the model set's platform (``model_labels``).
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass

import numpy as np

from popscore.metrics import spearman
from popscore.serving.model_sets import parse_model_name
from popscore.stream.fallback import FALLBACK_PLATFORM_LABEL, PERSISTENCE_MODEL


def model_labels(model_name: str) -> tuple[str, str] | None:
    """(kind, platform) metric labels of a kept prediction's model: its model set's platform, or ``fallback``
    for the persistence baseline. None for a field written before model sets were per platform (``temporal``),
    whose model cannot be told apart."""
    if model_name == PERSISTENCE_MODEL:
        return "temporal", FALLBACK_PLATFORM_LABEL
    return parse_model_name(model_name)


def eval_ages_reached(age_h: float, eval_ages_h: tuple[float, ...], tolerance_h: float) -> list[float]:
    """The evaluation ages a prediction made at ``age_h`` stands for (usually none or one)."""
    return [a for a in eval_ages_h if a <= age_h < a + tolerance_h]


@dataclass(frozen=True)
class AccuracyKey:
    model: str
    version: str
    age_h: str


class OnlineAccuracy:
    """Sliding windows of (predicted, realised) pairs; pure, so it can be tested without Redis."""

    def __init__(self, window: int) -> None:
        self.pairs: dict[AccuracyKey, deque] = defaultdict(lambda: deque(maxlen=window))
        self.evaluated: dict[AccuracyKey, int] = defaultdict(int)

    def add(self, key: AccuracyKey, predicted: float, realised: float) -> None:
        self.pairs[key].append((predicted, realised))
        self.evaluated[key] += 1

    def summary(self) -> dict[AccuracyKey, dict[str, float]]:
        out = {}
        for key, pairs in self.pairs.items():
            arr = np.array(pairs, dtype=np.float64)
            out[key] = {"n": len(arr), "mae": float(np.abs(arr[:, 0] - arr[:, 1]).mean()),
                        "srcc": spearman(arr[:, 1], arr[:, 0]) if len(arr) >= 3 else float("nan")}
        return out
