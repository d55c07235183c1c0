"""The decidability figures of the interval study (tools/interval_study.py): the chance that a perfectly
calibrated 80 % interval passes "80 +- 3 points" on n test outcomes."""

import numpy as np
import pytest

pytest.importorskip("scipy")
pytest.importorskip("torch")

from popscore.tools.interval_study import all_ages_probability, within_tolerance_probability  # noqa: E402


def test_within_tolerance_probability_is_the_binomial_mass_of_the_band():
    # n = 10: only k = 8 lies within 0.8 +- 0.03; P = C(10, 8) 0.8^8 0.2^2
    assert within_tolerance_probability(10) == pytest.approx(45 * 0.8**8 * 0.2**2)
    # n = 241 (Reddit's pooled test posts per age): k = 186..200
    from scipy.stats import binom

    assert within_tolerance_probability(241) == pytest.approx(binom.cdf(200, 241, 0.8) - binom.cdf(185, 241, 0.8))
    # HN's 6,620 per fold: a perfectly calibrated interval passes almost surely
    assert within_tolerance_probability(6620) > 0.999


def test_all_ages_probability_independent_is_the_product_and_dependence_raises_it():
    n = [241] * 5
    one = within_tolerance_probability(241)
    assert all_ages_probability(n) == pytest.approx(one**5)
    # fully dependent ages behave like one age; independent ones (identity correlation) like the product
    assert all_ages_probability(n, np.ones((5, 5)) , reps=4000) == pytest.approx(one, abs=0.03)
    assert all_ages_probability(n, np.eye(5), reps=4000) == pytest.approx(one**5, abs=0.03)
