"""After training, on the validation window: the served point's blend with Szabo-Huberman and the
interval's conformal margins, both per observation age and stored in the model (served inside the graph).

Split-conformal widening of the predicted [q10, q90] interval (conformalized quantile regression,
Romano et al. 2019), because the quantile heads alone cover less than they claim.
On held-out examples the conformity score is how far the outcome falls outside the interval (negative
inside); its ``coverage``-quantile, with the finite-sample correction, is the margin added on both sides.
The margin is fitted per observation age and applied piecewise-constant in age inside the model."""

from __future__ import annotations

import numpy as np

from popscore.trainer.baselines import SzaboHuberman
from popscore.trainer.data import Examples
from popscore.trainer.fitting import predict_mtaf
from popscore.trainer.models import MTAF, MTAFTemporal


def conformal_margin(lo: np.ndarray, hi: np.ndarray, y: np.ndarray, coverage: float = 0.8) -> float:
    """The margin m such that [lo - m, hi + m] covers ``coverage`` of (exchangeable) new outcomes."""
    scores = np.maximum(lo - y, y - hi)
    n = len(scores)
    if n == 0:
        return 0.0
    level = min(1.0, coverage * (1.0 + 1.0 / n))
    return float(np.quantile(scores, level, method="higher"))


def age_edges(ages_h: list[float]) -> list[float]:
    """Boundaries between the calibrated ages: each age's margin holds up to the midpoint to the next."""
    ages = sorted(ages_h)
    return [(a + b) / 2.0 for a, b in zip(ages[:-1], ages[1:])]


def margins_by_age(lo: np.ndarray, hi: np.ndarray, y: np.ndarray, age_h: np.ndarray,
                   coverage: float = 0.8) -> tuple[list[float], list[float]]:
    """(edges, margins) with ``len(margins) == len(edges) + 1``, for ``MTAFTemporal.set_interval_margins``."""
    ages = sorted(np.unique(age_h).tolist())
    margins = [conformal_margin(lo[age_h == a], hi[age_h == a], y[age_h == a], coverage) for a in ages]
    return age_edges(ages), margins


def calibrate_interval(model: MTAF, val: Examples, temporal: bool, coverage: float = 0.8) -> dict:
    """Fit the conformal interval margins on the validation window and store them in the model: one margin
    for MTAF-static (it sees no age), one per age for MTAF-temporal."""
    out = predict_mtaf(model, val, temporal)
    lo, hi = out["log_interval"][:, 0], out["log_interval"][:, 1]
    if temporal:
        edges, margins = margins_by_age(lo, hi, val.target, val.age_h, coverage)
        model.set_interval_margins(edges, margins)
    else:
        edges, margins = [], [conformal_margin(lo, hi, val.target, coverage)]
        model.set_interval_margin(margins[0])
    return {"age_edges_h": edges, "margins": margins, "n": int(len(val))}


def fit_blend(model: MTAFTemporal, val: Examples, sh: SzaboHuberman, evidence_se: float = 2.0) -> dict:
    """Per training age, the weight w of MTAF against Szabo-Huberman, stored in the model. w minimises the
    MAE on the validation window, but MTAF must earn it: unless the blend beats the baseline there by more
    than ``evidence_se`` standard errors of the paired difference, the baseline serves alone. On small data
    sets (Reddit's validation window has ~50 posts) the best w is mostly noise, and where MTAF cannot know
    more than the baseline (no observation yet) it must not do worse."""
    raw = predict_mtaf(model, val, temporal=True)["log_score"]
    baseline = sh.predict(val.age_h, val.log_now)
    ages = sorted(np.unique(val.age_h).tolist())
    grid = np.linspace(0.0, 1.0, 21)
    weights, gains = [], []
    for age in ages:
        m = val.age_h == age
        err_sh = np.abs(baseline[m] - val.target[m])

        def blend_error(weight: float) -> np.ndarray:
            return np.abs(weight * raw[m] + (1 - weight) * baseline[m] - val.target[m])

        w = float(grid[int(np.argmin([blend_error(g).mean() for g in grid]))])
        diff = blend_error(w) - err_sh
        standard_error = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else np.inf
        if diff.mean() + evidence_se * standard_error >= 0:
            w = 0.0
        weights.append(w)
        gains.append(float(blend_error(w).mean() - err_sh.mean()))
    edges = age_edges(ages)
    intercepts, slopes, unobserved = ([sh.coefficients_at(age)[i] for age in ages] for i in range(3))
    model.set_blend(edges, weights, intercepts, slopes, unobserved)
    return {"ages_h": ages, "age_edges_h": edges, "mtaf_weight": weights, "sh_intercept": intercepts,
            "sh_slope": slopes, "sh_unobserved": unobserved, "val_mae_change_vs_sh": gains, "n": int(len(val))}
