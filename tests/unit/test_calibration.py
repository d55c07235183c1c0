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


def test_conformal_quantile_is_the_finite_sample_order_statistic():
    from popscore.trainer.calibration import conformal_quantile

    scores = np.arange(1.0, 11.0)  # n = 10: the ceil(11 * 0.8) = 9th smallest
    assert conformal_quantile(scores[::-1], 0.8) == 9.0
    assert conformal_quantile(np.arange(1.0, 51.0), 0.8) == 41.0  # ceil(51 * 0.8) = 41
    assert conformal_quantile(np.array([3.0, 1.0]), 0.8) == 3.0  # too few scores: the largest
    assert conformal_quantile(np.array([]), 0.8) == 0.0
    # the guarantee it gives: over many calibration draws, a new score is below it >= 80 % of the time
    rng = np.random.default_rng(1)
    hits = [rng.normal() <= conformal_quantile(rng.normal(size=20), 0.8) for _ in range(4000)]
    assert 0.8 <= np.mean(hits) <= 0.8 + 1 / 21 + 0.02


def test_interval_plan_uses_the_baseline_residuals_only_where_the_baseline_serves():
    from popscore.trainer.calibration import interval_plan

    rng = np.random.default_rng(0)
    ages = np.repeat([0.5, 1.0], 50)
    point = np.zeros(100)
    val = {"point": point, "lo": point - 1.0, "hi": point + 1.0, "target": rng.normal(size=100), "age_h": ages}
    cal_ages = np.repeat([0.5, 1.0], 2000)
    cal_y = rng.normal(size=4000) * np.where(cal_ages == 0.5, 3.0, 100.0)
    cal = {"point": np.zeros(4000), "lo": np.full(4000, -1.0), "hi": np.full(4000, 1.0), "target": cal_y,
           "age_h": cal_ages}
    plan = interval_plan(val, cal, baseline_ages={0.5})
    assert plan["ages_h"] == [0.5, 1.0] and plan["age_edges_h"] == [0.75]
    assert plan["method"] == ["baseline_residuals", "cqr_validation"] and plan["head_weight"] == [0.0, 1.0]
    assert plan["n_by_age"] == [2000, 50]
    # 0.5 h: |N(0, 3)|'s 80 % quantile (1.28 * 3), from the calibration examples; 1 h: from the validation
    # window's scores (N(0, 1) outside [-1, 1]), untouched by the calibration examples' huge spread
    assert abs(plan["margins"][0] - 1.2816 * 3.0) < 0.25
    v1 = ages == 1.0
    expected = conformal_margin(val["lo"][v1], val["hi"][v1], val["target"][v1], 0.8)
    assert plan["margins"][1] == expected and abs(expected) < 1.0
    # without calibration examples every age is calibrated on the validation window
    assert interval_plan(val, None, baseline_ages={0.5})["method"] == ["cqr_validation"] * 2


def test_head_weight_zero_serves_the_point_plus_minus_the_margin():
    import torch

    from popscore.trainer.models import interval_around, piecewise_in_age

    point = torch.tensor([[1.0], [2.0], [3.0]])
    head_out = torch.tensor([[0.0, 2.0, 3.0]] * 3)  # softplus widths ~2.13 below, ~3.05 above
    log_age = torch.log1p(torch.tensor([[0.5], [1.0], [4.0]]))
    edges = torch.log1p(torch.tensor([0.75, 2.0]))
    margin = piecewise_in_age(edges, torch.tensor([0.5, 0.25, 0.1]), log_age)
    weight = piecewise_in_age(edges, torch.tensor([0.0, 1.0, 0.0]), log_age)
    iv = interval_around(point, head_out, margin, weight).numpy()
    sp = torch.nn.functional.softplus(torch.tensor([2.0, 3.0])).numpy()
    np.testing.assert_allclose(iv[0], [0.5, 1.5], atol=1e-6)  # baseline age: point -+ margin
    np.testing.assert_allclose(iv[1], [2.0 - sp[0] - 0.25, 2.0 + sp[1] + 0.25], atol=1e-6)  # head widths
    np.testing.assert_allclose(iv[2], [2.9, 3.1], atol=1e-6)


def test_a_label_is_final_once_the_post_left_the_list_or_its_horizon_is_covered():
    from popscore.trainer.data import PostTable, label_complete

    hour = 3600.0

    def seq(*obs_h):
        return np.array([[t * hour, 1, 1, 1, 1, 1] for t in obs_h], dtype=np.float64)

    table = PostTable(
        post_id=np.array(["left", "listed", "old_listed", "unseen"]), platform=["reddit"] * 4,
        created_at=np.array([0.0, 10 * hour, -200 * hour, 5 * hour]), posts=[None] * 4,
        seqs=[seq(1, 2, 3), seq(11, 12, 20), seq(-199, 20), np.zeros((0, 6))],
    )
    # data end at 20 h: "listed" was in the last snapshot and its 7 days are not over; "old_listed" is
    # still listed but its horizon ended long before; a post never observed has no final label
    done = label_complete(table, horizon_s=168 * hour, list_gap_s=0.5 * hour)
    assert done.tolist() == [True, False, True, False]
    # a gap shorter than the list's cadence does not count as having left
    assert label_complete(table, horizon_s=168 * hour, list_gap_s=18 * hour).tolist() == [False, False, True, False]


def test_fold_metrics_judge_intervals_on_final_labels_too():
    from popscore.trainer.data import Examples
    from popscore.trainer.train import fold_metrics

    y = np.array([1.0, 2.0, 3.0, 4.0])
    age = np.full(4, 0.5)
    test = Examples({}, y, age, np.arange(4), np.zeros(4), np.zeros(4))
    interval = np.array([[0.5, 1.5], [0.0, 1.0], [2.5, 3.5], [0.0, 1.0]])  # covers posts 0 and 2
    rows = fold_metrics(0, {"mtaf_temporal": y}, {"mtaf_temporal": interval}, test,
                        label_complete=np.array([True, True, True, False]))
    (row,) = rows
    assert row["coverage_80"] == 0.5 and row["n_complete"] == 3
    assert abs(row["coverage_80_complete"] - 2 / 3) < 1e-12


def test_weighted_conformal_quantile_equals_the_plain_one_with_unit_weights_and_leans_on_heavy_scores():
    from popscore.trainer.calibration import conformal_quantile, weighted_conformal_quantile

    rng = np.random.default_rng(2)
    for n in (1, 4, 10, 37, 200):
        s = rng.normal(size=n)
        assert weighted_conformal_quantile(s, np.ones(n)) == conformal_quantile(s)
    assert weighted_conformal_quantile(np.array([]), np.array([])) == 0.0
    # the old half of the scores is large, the recent half small: down-weighting the old ones lowers the quantile
    s = np.r_[np.full(50, 5.0), np.full(50, 1.0)]
    w = np.r_[np.full(50, 0.01), np.ones(50)]
    assert conformal_quantile(s) == 5.0 and weighted_conformal_quantile(s, w) == 1.0


def test_label_wait_keeps_posts_that_may_still_be_listed_out_of_every_test_window():
    from popscore.trainer.data import PostTable, data_end, rolling_origin_folds

    hour = 3600.0
    created = np.arange(100) * hour  # one post an hour; each observed for 3 h
    table = PostTable(post_id=np.arange(100).astype(str), platform=["reddit"] * 100, created_at=created,
                      posts=[None] * 100, seqs=[np.array([[c + h * hour, 1, 1, 1, 1, 1] for h in (1, 2, 3)])
                                                for c in created])
    assert data_end(table) == 102 * hour
    folds = rolling_origin_folds(table, 4, 0.4, 5 * hour, label_wait_s=12 * hour)
    tests = np.concatenate([t for _, t, _ in folds])
    # eligible: created <= 90 h (91 posts); the latest 40 % of them, i.e. posts 55..90, in four windows
    assert created[tests].max() == 90 * hour and len(tests) == round(0.4 * 91)
    assert all(info["label_wait_s"] == 12 * hour for *_, info in folds)
    for train, test, _ in folds:
        assert created[train].max() < created[test].min() - 5 * hour
    # without the wait the windows reach the data's end
    assert created[np.concatenate([t for _, t, _ in rolling_origin_folds(table, 4, 0.4, 5 * hour)])].max() == 99 * hour
