"""Evaluation metrics and baselines on hand-made numbers (no data needed)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from popscore.trainer.baselines import SzaboHuberman
from popscore.metrics import ndcg_at_k, pairwise_accuracy, regression_metrics, spearman


def test_perfect_and_reversed_rankings():
    y = np.arange(20, dtype=float)
    m = regression_metrics(y, y)
    assert m["mae"] == 0 and m["r2"] == 1 and m["srcc"] == pytest.approx(1)
    assert m["ndcg_at_10"] == pytest.approx(1) and m["pairwise_acc"] == 1 and m["median_acc"] == 1
    r = regression_metrics(y, -y)
    assert r["srcc"] == pytest.approx(-1) and r["pairwise_acc"] == 0 and r["ndcg_at_10"] < 1


def test_ndcg_by_hand():
    y = np.array([3.0, 2.0, 1.0, 0.0])
    pred = np.array([0.0, 1.0, 2.0, 3.0])  # exactly reversed
    dcg = 0 / math.log2(2) + 1 / math.log2(3) + 2 / math.log2(4) + 3 / math.log2(5)
    idcg = 3 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4) + 0 / math.log2(5)
    assert ndcg_at_k(y, pred, 10) == pytest.approx(dcg / idcg)


def test_spearman_handles_ties_and_matches_pearson_of_ranks():
    a = np.array([1, 2, 2, 3, 10.0])
    b = np.array([5, 6, 7, 8, 9.0])
    ra = np.array([0, 1.5, 1.5, 3, 4])
    assert spearman(a, b) == pytest.approx(np.corrcoef(ra, np.arange(5))[0, 1])


def test_mae_mse_r2_and_coverage():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    p = np.array([2.0, 2.0, 2.0, 2.0])
    m = regression_metrics(y, p, interval=np.array([[0, 1.5], [0, 1.5], [0, 1.5], [0, 1.5]]))
    assert m["mae"] == pytest.approx(1.0) and m["mse"] == pytest.approx(1.5)
    assert m["r2"] == pytest.approx(1 - 1.5 / np.var(y))
    assert m["coverage_80"] == pytest.approx(0.25)
    assert 0.4 <= pairwise_accuracy(np.arange(100.0), np.zeros(100)) <= 0.6  # ties count as half


def test_szabo_huberman_recovers_a_line_per_age():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 5, 400)
    age = np.repeat([0.5, 1.0], 200)
    y = np.where(age == 0.5, 1.0 + 0.9 * x, 0.5 + 1.0 * x)
    sh = SzaboHuberman().fit(age, x, y)
    assert sh.coef[0.5][:2] == pytest.approx((1.0, 0.9)) and sh.coef[1.0][:2] == pytest.approx((0.5, 1.0))
    np.testing.assert_allclose(sh.predict(np.array([0.6, 2.0]), np.array([1.0, 1.0])), [1.9, 1.5])


def test_discriminable_pairs_same_author_close_in_time_clear_gap():
    from popscore.trainer.pairwise import PairConfig, discriminable_pairs

    authors = ["a", "a", "a", "b", "b", ""]
    t = np.array([0.0, 3600.0, 10 * 86400.0, 0.0, 60.0, 0.0])
    y = np.array([5.0, 2.0, 1.0, 3.0, 3.5, 9.0])
    pairs = discriminable_pairs(authors, t, y, PairConfig(window_s=86400.0, min_gap=1.0))
    # (0, 1): same author, 1 h apart, gap 3 -> kept with the more popular first; (1, 2) too far apart;
    # (3, 4) gap too small; the anonymous post pairs with nobody
    assert pairs.tolist() == [[0, 1]]
