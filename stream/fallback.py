"""The fallback: what a post gets when no model set trained for its platform can score it.

Never another platform's model. At upload there is nothing to go on, so no static prediction is made (counted
in ``popscore_fallback_predictions_total``). Once observations exist, the temporal prediction is persistence:
the score at the horizon is taken to be the score now, ``log1p(score under the platform's weights)``, exactly
the ``log1p_score_now`` input the temporal heads read. It has no calibrated interval, so its records carry
``"interval": null``; they name ``model_name`` ``persistence``, no ``trained_for`` and the flag ``fallback``.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from popscore import features as F
from popscore.serving.routing import Route

PERSISTENCE_MODEL = "persistence"
PERSISTENCE_VERSION = "1"  # the baseline's definition; changes only if the definition does
FALLBACK_PLATFORM_LABEL = "fallback"  # the ``platform`` label of what the fallback produced
SCORE_NOW = F.DYNAMIC_FEATURE_NAMES.index("log1p_score_now")
LOG1P_AGE_H = F.DYNAMIC_FEATURE_NAMES.index("log1p_age_h")


def persistence_log_score(dynamic_features: np.ndarray) -> np.ndarray:
    """[B, 1] log1p(score now) from the temporal inputs' dynamic features (float64)."""
    return dynamic_features[:, SCORE_NOW:SCORE_NOW + 1].astype(np.float64)


def count_fallback(metrics, kind: str, routes: list[Route]) -> None:
    """Predictions no model set made, by the post's platform (its metric label) and why."""
    for (label, why), n in Counter((r.label, r.fallback_reason) for r in routes).items():
        metrics.fallback_predictions.labels(kind, label, why).inc(n)
