"""Baselines any temporal model must beat at the same observation age: persistence, Szabo-Huberman per age
(log1p(final) = a_t + b_t * log1p(now)), and gradient-boosted trees (LightGBM) on the same features."""

from __future__ import annotations

import numpy as np

from popscore import features


def persistence(log_now: np.ndarray) -> np.ndarray:
    return np.asarray(log_now, float)


class SzaboHuberman:
    """One least-squares line per observation age over the posts observed by then (log1p(now) > 0), and the
    mean outcome of those not observed yet (ages are matched exactly; an unseen age uses the nearest
    fitted one). The line is Szabo-Huberman's; the unobserved get their own mean because a post first seen
    hours after creation (Reddit) sits at log1p(now) = 0 and would otherwise drag the line with its leverage."""

    def __init__(self) -> None:
        self.coef: dict[float, tuple[float, float, float]] = {}  # age -> (intercept, slope, unobserved mean)

    def fit(self, age_h: np.ndarray, log_now: np.ndarray, y: np.ndarray) -> "SzaboHuberman":
        for a in np.unique(age_h):
            m = age_h == a
            seen = m & (log_now > 0)
            if seen.sum() >= 2 and np.ptp(log_now[seen]) > 0:
                b, c = np.polyfit(log_now[seen], y[seen], 1)
            else:
                b, c = 0.0, float(y[seen].mean() if seen.any() else y[m].mean())
            unseen = m & ~(log_now > 0)
            u = float(y[unseen].mean()) if unseen.any() else float(c)
            self.coef[float(a)] = (float(c), float(b), u)
        return self

    def coefficients_at(self, age_h: float) -> tuple[float, float, float]:
        """(intercept, slope, unobserved mean) of the fitted age nearest ``age_h``."""
        ages = np.array(sorted(self.coef))
        return self.coef[float(ages[np.argmin(np.abs(ages - age_h))])]

    def predict(self, age_h: np.ndarray, log_now: np.ndarray) -> np.ndarray:
        out = np.empty(len(age_h))
        for a in np.unique(age_h):
            c, b, u = self.coefficients_at(a)
            m = age_h == a
            out[m] = np.where(log_now[m] > 0, c + b * log_now[m], u)
        return out


def tabular(inputs: dict[str, np.ndarray], temporal: bool, text: bool = False) -> np.ndarray:
    """The same features as the neural models, flattened for trees."""
    parts = [inputs["static_features"]]
    if temporal:
        parts += [inputs["sequence"].reshape(len(inputs["sequence"]), -1), inputs["dynamic_features"]]
    if text:
        parts.append(inputs["text_embedding"])
    return np.concatenate(parts, axis=1).astype(np.float32)


class GBT:
    def __init__(self, temporal: bool, text: bool = False, seed: int = 0, n_estimators: int = 400,
                 objective: str = "l1", num_threads: int = 2) -> None:
        self.temporal, self.text = temporal, text
        import lightgbm as lgb

        self.model = lgb.LGBMRegressor(
            n_estimators=n_estimators, learning_rate=0.05, num_leaves=63, min_child_samples=50,
            subsample=0.8, subsample_freq=1, colsample_bytree=0.8, objective=objective,
            random_state=seed, n_jobs=num_threads, verbose=-1,
        )  # fmt: skip

    def _base(self, inputs):
        if not self.temporal:
            return 0.0
        return inputs["dynamic_features"][:, features.DYNAMIC_FEATURE_NAMES.index("log1p_score_now")].astype(float)

    def fit(self, inputs: dict[str, np.ndarray], y: np.ndarray) -> "GBT":
        self.model.fit(tabular(inputs, self.temporal, self.text), y - self._base(inputs))
        return self

    def predict(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return self.model.predict(tabular(inputs, self.temporal, self.text)) + self._base(inputs)
