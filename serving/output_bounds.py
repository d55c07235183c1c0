"""Bounded, honest model outputs: what a served model may claim, given what its training data supports.

A model version declares in its ``metadata.json`` (``"bounds"``) the range of the target it was trained on
(``log_score``: log1p of the final score) and, for a temporal head, the ranges of the inputs it saw
(``age_h``, ``log1p_score_now``). The exported graphs guarantee nothing about ranges, so every prediction
goes through :func:`bound_outputs` before it is published:

- the point and both interval ends are clamped into ``log_score``'s range, and the interval is widened to
  contain the point (``lo <= point <= hi`` always holds);
- a row with any non-finite output is marked ``non_finite``: the caller replaces it by the fallback;
- a row is marked ``out_of_range`` when an output had to be clamped or an input lies outside the range the
  model was trained on (the model extrapolates there).

Pure numpy, no I/O: unit-tested and fuzzed on its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np

REQUIRED_BOUNDS = {"static": ("log_score",), "content": (), "temporal": ("log_score", "age_h", "log1p_score_now")}
"""The bounds a version of each model kind must declare to be served (the content half produces no score)."""


class BoundsMissing(ValueError):
    """A model version that does not declare the bounds its kind needs: it is not servable."""


@dataclass(frozen=True)
class DeclaredBounds:
    """[lo, hi] ranges from a version's metadata; ``None`` where the kind does not need one."""

    log_score: tuple[float, float] | None = None
    age_h: tuple[float, float] | None = None
    log1p_score_now: tuple[float, float] | None = None

    @classmethod
    def from_metadata(cls, metadata: Mapping, kind: str) -> "DeclaredBounds":
        """The bounds ``kind`` needs, read from a version's metadata; raises ``BoundsMissing`` saying what is
        absent or malformed."""
        declared = metadata.get("bounds")
        needed = REQUIRED_BOUNDS[kind]
        if needed and not isinstance(declared, Mapping):
            raise BoundsMissing("declares no \"bounds\"")
        ranges = {}
        for name in needed:
            ranges[name] = _range(declared.get(name), name)
        return cls(**ranges)


def _range(value, name: str) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise BoundsMissing(f"bounds[{name!r}] is {value!r}, not [lo, hi]")
    try:
        lo, hi = float(value[0]), float(value[1])
    except (TypeError, ValueError):
        raise BoundsMissing(f"bounds[{name!r}] is {value!r}, not two numbers") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise BoundsMissing(f"bounds[{name!r}] = [{lo}, {hi}] is not a finite range with lo <= hi")
    return lo, hi


@dataclass(frozen=True)
class BoundedOutputs:
    """Per row (float64): the point and the [lo, hi] interval in log1p units, within the declared range and
    ordered lo <= point <= hi (rows marked ``non_finite`` hold the range's lower end and must not be used);
    ``non_finite``: an output was NaN or infinite; ``out_of_range``: an output was clamped or an input was
    outside the training range."""

    log_score: np.ndarray  # [B]
    interval: np.ndarray | None  # [B, 2]
    non_finite: np.ndarray  # [B] bool
    out_of_range: np.ndarray  # [B] bool


def bound_outputs(log_score: np.ndarray, log_interval: np.ndarray | None, bounds: DeclaredBounds,
                  log1p_age_h: np.ndarray | None = None, log1p_score_now: np.ndarray | None = None
                  ) -> BoundedOutputs:
    """Clamp a batch of model outputs into ``bounds`` and flag what needed it.

    ``log_score`` [B] or [B, 1]; ``log_interval`` [B, 2] (quantile pair, either order) or None;
    ``log1p_age_h`` and ``log1p_score_now`` [B]: the temporal head's dynamic inputs (``log1p`` of the age in
    hours, as the graph reads it), checked against the declared ``age_h`` and ``log1p_score_now`` ranges."""
    lo_bound, hi_bound = bounds.log_score
    point = np.asarray(log_score, dtype=np.float64).reshape(-1)
    non_finite = ~np.isfinite(point)
    interval = None
    if log_interval is not None:
        pair = np.asarray(log_interval, dtype=np.float64).reshape(len(point), 2)
        non_finite |= ~np.isfinite(pair).all(axis=1)
    # Non-finite rows get the range's lower end so that nothing below compares NaN; they are not published.
    point = np.where(non_finite, lo_bound, point)
    clamped_point = np.clip(point, lo_bound, hi_bound)
    out_of_range = clamped_point != point
    if log_interval is not None:
        pair = np.where(non_finite[:, None], lo_bound, pair)
        pair = np.sort(pair, axis=1)  # a crossed quantile pair is an ordering slip, not an out-of-range output
        clamped_pair = np.clip(pair, lo_bound, hi_bound)
        out_of_range |= (clamped_pair != pair).any(axis=1)
        interval = np.stack([np.minimum(clamped_pair[:, 0], clamped_point),
                             np.maximum(clamped_pair[:, 1], clamped_point)], axis=1)
    out_of_range |= _outside(log1p_age_h, bounds.age_h, log1p=True)
    out_of_range |= _outside(log1p_score_now, bounds.log1p_score_now, log1p=False)
    out_of_range &= ~non_finite
    return BoundedOutputs(clamped_point, interval, non_finite, out_of_range)


def _outside(values: np.ndarray | None, declared: tuple[float, float] | None, log1p: bool) -> np.ndarray | bool:
    """Rows whose input lies outside ``declared`` (a NaN input counts as outside). The graph's inputs are float32,
    so the range is compared in float32 too (and, for the age, in the log1p units the graph reads): an input
    equal to a training boundary is not flagged by a rounding difference."""
    if values is None or declared is None:
        return False
    lo, hi = (np.log1p(np.maximum(declared, 0.0)) if log1p else np.asarray(declared)).astype(np.float32)
    values = np.asarray(values, dtype=np.float32).reshape(-1)
    return ~((values >= lo) & (values <= hi))
