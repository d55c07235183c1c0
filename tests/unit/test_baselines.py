"""Szabo-Huberman as the served blend uses it: a line over the posts observed by an age, their own mean for
the rest."""

import numpy as np

from popscore.trainer.baselines import SzaboHuberman


def test_unobserved_posts_get_their_mean_and_do_not_bend_the_line():
    rng = np.random.default_rng(0)
    seen = rng.uniform(1, 8, 500)
    y_seen = 0.5 + 1.1 * seen + rng.normal(0, 0.05, 500)
    y_unseen = np.full(20, 9.0)  # first seen later, and large: with leverage at log1p(now) = 0
    age = np.full(520, 2.0)
    log_now = np.r_[seen, np.zeros(20)]
    sh = SzaboHuberman().fit(age, log_now, np.r_[y_seen, y_unseen])
    intercept, slope, unobserved = sh.coefficients_at(2.0)
    assert abs(slope - 1.1) < 0.02 and abs(intercept - 0.5) < 0.1
    assert unobserved == 9.0
    pred = sh.predict(np.array([2.0, 2.0, 3.5]), np.array([0.0, 4.0, 4.0]))  # 3.5 h: the nearest fitted age
    np.testing.assert_allclose(pred, [9.0, intercept + 4 * slope, intercept + 4 * slope])


def test_an_age_without_observed_posts_predicts_the_mean():
    sh = SzaboHuberman().fit(np.zeros(4), np.zeros(4), np.array([1.0, 2.0, 3.0, 6.0]))
    assert sh.predict(np.zeros(2), np.zeros(2)).tolist() == [3.0, 3.0]
