"""Bounded, honest outputs (serving/output_bounds.py): by hand, then fuzzed with a seeded random loop (hypothesis
is not a dependency of the project)."""

from __future__ import annotations

import numpy as np
import pytest

from popscore.serving.output_bounds import BoundsMissing, DeclaredBounds, bound_outputs

TEMPORAL = DeclaredBounds(log_score=(1.0, 8.0), age_h=(0.0, 6.0), log1p_score_now=(1.0, 7.5))
STATIC = DeclaredBounds(log_score=(1.0, 8.0))


def test_outputs_inside_the_range_pass_unchanged_and_unflagged():
    out = bound_outputs(np.array([[2.0], [7.0]]), np.array([[1.5, 3.0], [6.0, 7.9]]), STATIC)
    np.testing.assert_array_equal(out.log_score, [2.0, 7.0])
    np.testing.assert_array_equal(out.interval, [[1.5, 3.0], [6.0, 7.9]])
    assert not out.out_of_range.any() and not out.non_finite.any()


def test_absurd_outputs_are_clamped_and_flagged():
    # the post on "hn": a log-score of 65 (3.5e28) with an interval up to 85 (1.2e37); a negative one
    out = bound_outputs(np.array([65.0, -3.0]), np.array([[60.0, 85.0], [-5.0, -1.0]]), STATIC)
    np.testing.assert_array_equal(out.log_score, [8.0, 1.0])
    np.testing.assert_array_equal(out.interval, [[8.0, 8.0], [1.0, 1.0]])
    assert out.out_of_range.tolist() == [True, True]


def test_the_interval_is_widened_to_hold_the_point_and_a_crossed_pair_reordered():
    out = bound_outputs(np.array([5.0, 2.0]), np.array([[2.0, 3.0], [4.0, 3.0]]), STATIC)
    np.testing.assert_array_equal(out.interval, [[2.0, 5.0], [2.0, 4.0]])
    assert not out.out_of_range.any()  # neither needed clamping into the declared range


def test_non_finite_outputs_are_marked_for_the_fallback():
    out = bound_outputs(np.array([np.nan, 3.0, np.inf, 2.0]),
                        np.array([[1.0, 2.0], [np.nan, 4.0], [1.0, 2.0], [1.5, -np.inf]]), STATIC)
    assert out.non_finite.tolist() == [True, True, True, True]
    assert not out.out_of_range.any()
    assert np.isfinite(out.log_score).all() and np.isfinite(out.interval).all()


def test_inputs_outside_the_training_range_flag_the_prediction():
    age_h = np.array([0.0, 6.0, 6.5, 3.0, 3.0])
    score_now = np.array([1.0, 7.5, 2.0, 0.5, 9.0], dtype=np.float32)
    out = bound_outputs(np.full(5, 3.0), np.tile([2.0, 4.0], (5, 1)), TEMPORAL,
                        np.log1p(age_h).astype(np.float32), score_now)
    # at the boundaries (exactly what training saw, through float32) is inside
    assert out.out_of_range.tolist() == [False, False, True, True, True]


def test_bounds_come_from_the_metadata_and_their_absence_is_refused():
    meta = {"bounds": {"log_score": [1, 8], "age_h": [0, 6], "log1p_score_now": [1, 7.5]}}
    assert DeclaredBounds.from_metadata(meta, "temporal") == TEMPORAL
    assert DeclaredBounds.from_metadata({"bounds": {"log_score": [1, 8]}}, "static") == STATIC
    assert DeclaredBounds.from_metadata({}, "content") == DeclaredBounds()
    for bad in ({}, {"bounds": {"log_score": [1, 8]}}, {"bounds": {**meta["bounds"], "age_h": [6, 0]}},
                {"bounds": {**meta["bounds"], "log_score": [1, float("nan")]}},
                {"bounds": {**meta["bounds"], "log_score": "1..8"}}, {"bounds": [1, 8]}):
        with pytest.raises(BoundsMissing):
            DeclaredBounds.from_metadata(bad, "temporal")


def _random_outputs(rng: np.random.Generator, n: int) -> np.ndarray:
    """Any float32 value a broken graph may return: ordinary, huge, tiny, negative, NaN, +-inf."""
    kind = rng.integers(0, 6, n)
    values = np.where(kind == 0, rng.normal(4, 3, n), 0.0)
    values = np.where(kind == 1, rng.uniform(-1e30, 1e30, n), values)
    values = np.where(kind == 2, rng.uniform(-1e-30, 1e-30, n), values)
    values = np.where(kind == 3, np.nan, values)
    values = np.where(kind == 4, np.inf * rng.choice([-1, 1], n), values)
    values = np.where(kind == 5, rng.choice([1.0, 8.0, 0.0, 9.0], n), values)
    return values.astype(np.float32)


def test_fuzz_every_published_output_is_inside_its_bounds_and_holds_its_point():
    rng = np.random.default_rng(18)
    for _ in range(300):
        lo = float(rng.uniform(-2, 5))
        bounds = DeclaredBounds(log_score=(lo, lo + float(rng.choice([0.0, rng.uniform(0, 10)]))),
                                age_h=(0.0, float(rng.uniform(0, 48))), log1p_score_now=(0.0, float(rng.uniform(0, 12))))
        n = int(rng.integers(1, 64))
        point = _random_outputs(rng, n).reshape(n, 1)
        pair = _random_outputs(rng, 2 * n).reshape(n, 2)
        age = _random_outputs(rng, n)
        now = _random_outputs(rng, n)
        out = bound_outputs(point, pair, bounds, age, now)
        usable = ~out.non_finite
        expected_non_finite = ~np.isfinite(point[:, 0]) | ~np.isfinite(pair).all(axis=1)
        assert (out.non_finite == expected_non_finite).all()
        lo_b, hi_b = bounds.log_score
        assert ((out.log_score >= lo_b) & (out.log_score <= hi_b)).all()
        assert ((out.interval >= lo_b) & (out.interval <= hi_b)).all()
        assert (out.interval[:, 0] <= out.log_score).all() and (out.log_score <= out.interval[:, 1]).all()
        # unchanged exactly where nothing was out of range; flagged wherever something was
        inside = usable & (point[:, 0] >= lo_b) & (point[:, 0] <= hi_b) & (pair >= lo_b).all(1) & (pair <= hi_b).all(1)
        np.testing.assert_array_equal(out.log_score[inside], point[inside, 0].astype(np.float64))
        inputs_outside = ~((age >= np.float32(np.log1p(bounds.age_h[0]))) & (age <= np.float32(np.log1p(bounds.age_h[1])))
                           & (now >= np.float32(bounds.log1p_score_now[0])) & (now <= np.float32(bounds.log1p_score_now[1])))
        assert (out.out_of_range == (usable & (~inside | inputs_outside))).all()
