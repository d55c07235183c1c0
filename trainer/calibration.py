"""After training, on the validation window: the served point's blend with Szabo-Huberman and the
interval's conformal margins, both per observation age and stored in the model (served inside the graph).

Split-conformal widening of the predicted [q10, q90] interval (conformalized quantile regression,
Romano et al. 2019), because the quantile heads alone cover less than they claim.
On held-out examples the conformity score is how far the outcome falls outside the interval (negative
inside); its ``coverage``-quantile, with the finite-sample correction, is the margin added on both sides.
The margin is fitted per observation age and applied piecewise-constant in age inside the model.

Where the served point at an age is Szabo-Huberman alone (blend weight 0: on Reddit and YouTube, almost
every age), the interval is that point -+ the conformal quantile of its absolute residuals, fitted on the
latest part of the training window (``calibration`` examples: a few hundred posts, not the validation
window's ~50). The baseline's three coefficients per age fitted on hundreds of posts leave its training
residuals as good as held out, and the head's widths, learnt around MTAF's point, say nothing about the
baseline's. On ~50 validation posts per age the margins were noise and stale (docs/training.md,
"Intervals")."""

from __future__ import annotations

import numpy as np

from popscore.trainer.baselines import SzaboHuberman
from popscore.trainer.data import Examples
from popscore.trainer.fitting import predict_mtaf
from popscore.trainer.models import MTAF, MTAFTemporal


def conformal_quantile(scores: np.ndarray, coverage: float = 0.8) -> float:
    """The ceil((n + 1) * coverage)-th smallest of n conformity scores: a new exchangeable score is at most
    this with probability >= ``coverage``. With too few scores for that (n < coverage / (1 - coverage)) the
    largest; 0 without any."""
    scores = np.sort(np.asarray(scores, dtype=np.float64))
    n = len(scores)
    if n == 0:
        return 0.0
    k = int(np.ceil((n + 1) * coverage - 1e-9))
    return float(scores[min(max(k, 1), n) - 1])


def weighted_conformal_quantile(scores: np.ndarray, weights: np.ndarray, coverage: float = 0.8) -> float:
    """Non-exchangeable split conformal (Barber et al. 2023): the coverage-quantile of the scores weighted
    by ``weights``, with the new point's weight 1 placed at +inf (so it is conservative like the unweighted
    finite-sample quantile, which it equals with weights 1). Weights in [0, 1]: the new point's is 1. Why:
    under drift, recent residuals should count more than old ones (docs/training.md, "Intervals")."""
    if len(scores) == 0:
        return 0.0
    order = np.argsort(scores)
    s, w = np.asarray(scores, np.float64)[order], np.asarray(weights, np.float64)[order]
    cum = np.cumsum(w) / (w.sum() + 1.0)
    k = np.searchsorted(cum, coverage - 1e-9)
    return float(s[k]) if k < len(s) else float(s[-1])


def conformal_margin(lo: np.ndarray, hi: np.ndarray, y: np.ndarray, coverage: float = 0.8) -> float:
    """The margin m such that [lo - m, hi + m] covers ``coverage`` of (exchangeable) new outcomes."""
    return conformal_quantile(np.maximum(lo - y, y - hi), coverage)


def residual_margin(point: np.ndarray, y: np.ndarray, coverage: float = 0.8) -> float:
    """The margin m such that [point - m, point + m] covers ``coverage`` of new outcomes."""
    return conformal_quantile(np.abs(y - point), coverage)


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


def interval_plan(val: dict[str, np.ndarray], calibration: dict[str, np.ndarray] | None,
                  baseline_ages: set[float], coverage: float = 0.8) -> dict:
    """Per age of ``val``: (margin, head weight, method, n). ``val`` and ``calibration`` hold per example
    ``point``, ``lo``, ``hi`` (the interval before calibration), ``target``, ``age_h``. At the ages in
    ``baseline_ages`` (the served point is the baseline alone) the margin is ``residual_margin`` on
    ``calibration``'s examples of that age and the head's widths are dropped (weight 0); elsewhere it is the
    conformalized-quantile margin on ``val``."""
    ages = sorted(np.unique(val["age_h"]).tolist())
    margins, weights, methods, counts = [], [], [], []
    for age in ages:
        use_residuals = age in baseline_ages and calibration is not None and np.any(calibration["age_h"] == age)
        if use_residuals:
            m = calibration["age_h"] == age
            margins.append(residual_margin(calibration["point"][m], calibration["target"][m], coverage))
            weights.append(0.0)
            methods.append("baseline_residuals")
        else:
            m = val["age_h"] == age
            margins.append(conformal_margin(val["lo"][m], val["hi"][m], val["target"][m], coverage))
            weights.append(1.0)
            methods.append("cqr_validation")
        counts.append(int(m.sum()))
    return {"ages_h": ages, "age_edges_h": age_edges(ages), "margins": margins, "head_weight": weights,
            "method": methods, "n_by_age": counts}


def uncalibrated(model: MTAF, ex: Examples, temporal: bool) -> dict[str, np.ndarray]:
    """The served point and the interval before calibration (the model's margins must still be zero)."""
    out = predict_mtaf(model, ex, temporal)
    return {"point": out["log_score"], "lo": out["log_interval"][:, 0].astype(np.float64),
            "hi": out["log_interval"][:, 1].astype(np.float64), "target": ex.target, "age_h": ex.age_h}


def calibrate_interval(model: MTAF, val: Examples, temporal: bool, coverage: float = 0.8,
                       calibration: Examples | None = None, baseline_ages: set[float] | None = None) -> dict:
    """Fit the interval margins and store them in the model: one conformal margin on the validation window
    for MTAF-static (it sees no age); per age for MTAF-temporal (``interval_plan``: at ``baseline_ages``
    from the served baseline's residuals on ``calibration``, elsewhere on the validation window)."""
    v = uncalibrated(model, val, temporal)
    if temporal:
        cal = uncalibrated(model, calibration, temporal) if calibration is not None and baseline_ages else None
        plan = interval_plan(v, cal, set(baseline_ages or ()), coverage)
        model.set_interval_margins(plan["age_edges_h"], plan["margins"], plan["head_weight"])
        return {**plan, "n": int(len(val)), "n_calibration": int(len(calibration)) if cal is not None else 0}
    margin = conformal_margin(v["lo"], v["hi"], v["target"], coverage)
    model.set_interval_margin(margin)
    return {"age_edges_h": [], "margins": [margin], "n": int(len(val))}


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
