import numpy as np

from popscore.trainer.calibration import age_edges, conformal_margin, margins_by_age


def test_margin_widens_an_interval_that_covers_too_little():
    rng = np.random.default_rng(0)
    y = rng.normal(size=20_000)
    lo, hi = np.full_like(y, -0.5), np.full_like(y, 0.5)  # covers ~38 %
    m = conformal_margin(lo, hi, y, 0.8)
    assert m > 0
    assert abs(np.mean((y >= lo - m) & (y <= hi + m)) - 0.8) < 0.01
    # on an interval that is too wide the margin is negative: it narrows
    assert conformal_margin(lo - 3, hi + 3, y, 0.8) < 0


def test_margins_are_per_age_with_midpoint_edges():
    assert age_edges([0.5, 1.0, 2.0, 4.0]) == [0.75, 1.5, 3.0]
    y = np.concatenate([np.zeros(100), np.ones(100) * 2])
    age = np.repeat([1.0, 2.0], 100)
    edges, margins = margins_by_age(np.zeros(200), np.zeros(200), y, age, 0.8)
    assert edges == [1.5] and margins == [0.0, 2.0]
