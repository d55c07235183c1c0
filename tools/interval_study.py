"""Interval calibrations compared on a training run's folds, without retraining: reads the uncalibrated
intervals ``popscore train`` saves (``<report-dir>/<dataset>/intervals.npz``) and prints, per method, the
80 % coverage per fold and age on every test outcome and on the final labels only (data.label_complete),
pooled over the folds, with the binomial standard error of the pooled figure and the mean width.

    python -m popscore.tools.interval_study --dataset reddit [--report-dir reports]
    python -m popscore.tools.interval_study --dataset reddit --layouts   # no training run needed

``--layouts`` (issue 18 item 4): the served point at Reddit's evaluation ages is Szabo-Huberman alone, so
the baseline-residual calibrations can be judged on any fold layout without training MTAF. Per layout
(the served one, and ones whose test windows hold only posts with final labels) and calibration method:
coverage per fold and age, pooled with its binomial standard error, and whether a perfectly calibrated
interval could be told apart at all (the probability that every age's pooled coverage lands in 80 +- 3).

The methods that calibrate on training-window posts refit Szabo-Huberman on the fold's fit window for the
served point there: they describe the ages where the served point is the baseline alone (blend weight 0).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy import stats

from popscore import features
from popscore.settings import ScoreSettings
from popscore.trainer import data
from popscore.trainer.baselines import SzaboHuberman
from popscore.trainer.calibration import (conformal_margin, conformal_quantile, residual_margin,
                                          weighted_conformal_quantile)
from popscore.trainer.train import TrainConfig, spec_for

METHODS = {
    "cqr_validation_per_age": "head interval + margin, validation window, per age (before this change)",
    "cqr_validation_neighbour_ages": "head interval + margin, validation window, the age and its neighbours",
    "normalised_validation_per_age": "head interval + q x its width, validation window, per age",
    "residual_validation_per_age": "point -+ |residual| quantile, validation window, per age",
    "residual_training_all": "point -+ |residual| quantile, every training post, per age",
    "residual_training_latest_half": "point -+ |residual| quantile, latest half of the training posts (served)",
}


def run_config(results_json: Path, default: TrainConfig) -> TrainConfig:
    """The fold layout the run that wrote intervals.npz used (its results.json), so its folds are rebuilt as
    they were; the defaults where it is absent."""
    if not results_json.exists():
        return default
    run = json.loads(results_json.read_text())["config"]
    keys = ("folds", "test_frac", "val_frac", "calibration_frac", "embargo_h", "label_wait_h")
    return replace(default, **{k: run[k] for k in keys if k in run})


def fold_records(npz, k: int) -> tuple[dict, dict]:
    rec = lambda split: {f: npz[f"fold{k}/temporal/{split}/{f}"]  # noqa: E731
                         for f in ("point", "lo", "hi", "target", "age_h", "created_at", "log_now")}
    return rec("val"), rec("test")


def rows_complete(table: data.PostTable, spec: features.FeatureSpec, idx: np.ndarray, ages: tuple,
                  complete: np.ndarray) -> np.ndarray:
    """data.make_examples' row order: per age, the posts of ``idx`` with a finite target."""
    t = table.take(idx)
    w = features.weight_matrix(t.platform, ScoreSettings().weights_for, spec.counters)
    ok = np.isfinite(features.target_log_score(spec, t.seqs, t.created_at, w))
    return np.tile(complete[idx][ok], len(ages))


def interval(method: str, age: float, val: dict, train: dict, P: np.ndarray, L: np.ndarray, H: np.ndarray):
    ages = sorted(np.unique(val["age_h"]).tolist())
    v = val["age_h"] == age
    if method == "cqr_validation_neighbour_ages":
        i = ages.index(age)
        v = np.isin(val["age_h"], ages[max(0, i - 1): i + 2])
    if method.startswith("cqr"):
        m = conformal_margin(val["lo"][v], val["hi"][v], val["target"][v])
        lo, hi = L - m, H + m
    elif method == "normalised_validation_per_age":
        width = np.maximum(val["hi"][v] - val["lo"][v], 1e-3)
        q = conformal_quantile(np.maximum(val["lo"][v] - val["target"][v], val["target"][v] - val["hi"][v]) / width)
        lo, hi = L - q * (H - L), H + q * (H - L)
    else:
        src = val if method == "residual_validation_per_age" else train
        s = src["age_h"] == age
        if method == "residual_training_latest_half":
            s &= src["created_at"] >= np.quantile(src["created_at"], 0.5)
        m = residual_margin(src["point"][s], src["target"][s])
        lo, hi = P - m, P + m
    return np.minimum(lo, P), np.maximum(hi, P)


# ------------------------------------------------------------------------------------ decidability


def within_tolerance_probability(n: int, coverage: float = 0.8, tol: float = 0.03) -> float:
    """P(|k/n - coverage| <= tol) for k ~ Binomial(n, coverage): how often a perfectly calibrated interval's
    measured coverage on n independent outcomes passes the criterion."""
    k = np.arange(n + 1)
    return float(stats.binom.pmf(k[np.abs(k / n - coverage) <= tol + 1e-12], n, coverage).sum())


def all_ages_probability(n_by_age: list[int], corr: np.ndarray | None = None, coverage: float = 0.8,
                         tol: float = 0.03, reps: int = 20000, seed: int = 0) -> float:
    """P(every age's pooled coverage is within tol) for a perfectly calibrated interval. Without ``corr`` the
    ages are independent (the product); with it, one latent normal per post and age with that correlation
    (a Gaussian copula: the same posts are judged at every age, so their hits are dependent), each hit with
    probability ``coverage``; by simulation, on the smallest n of the ages."""
    if corr is None:
        return float(np.prod([within_tolerance_probability(n, coverage, tol) for n in n_by_age]))
    rng = np.random.default_rng(seed)
    n = min(n_by_age)
    z = rng.multivariate_normal(np.zeros(len(corr)), corr, size=(reps, n))  # [reps, n, ages]
    share = (z <= stats.norm.ppf(coverage)).mean(axis=1)
    return float(np.mean(np.all(np.abs(share - coverage) <= tol + 1e-12, axis=1)))


def normal_score_correlation(scores: np.ndarray) -> np.ndarray:
    """Correlation across ages of the per-post conformity scores' normal scores ([posts, ages])."""
    ranks = stats.rankdata(scores, axis=0) / (len(scores) + 1)
    return np.corrcoef(stats.norm.ppf(ranks), rowvar=False)


# ------------------------------------------------------------------------------------ layouts


@dataclass(frozen=True)
class Layout:
    """A rolling-origin fold layout: ``label_final`` False keeps every post; True leaves the posts created less
    than the label wait before the data's end out of every test window (their labels may not be final)."""

    folds: int
    test_frac: float
    label_final: bool
    what: str


LAYOUTS = {
    "served_3": Layout(3, 0.3, False, "served: latest 30 % of all posts, 3 folds (test labels partly not final)"),
    "served_6": Layout(6, 0.3, False, "the same test region in 6 folds"),
    "final_3": Layout(3, 0.4, True, "posts created >= the label wait before the data end; latest 40 % of them, "
                                    "3 folds"),
    "final_6": Layout(6, 0.4, True, "the same test region in 6 folds (the reference of the declared rule)"),
    "final_6_wide": Layout(6, 0.5, True, "posts created >= the label wait before the end; latest 50 %, 6 folds"),
}
LABEL_WAIT_H = {"reddit": 12.0}
"""Hours after which every post's label is final, read off the data (``data.label_complete``): Reddit's posts
leave r/all's top 100 within 12 h; YouTube's can trend for days, so the horizon (7 days) there."""

CALIBRATIONS = {
    "latest_half": "|residual| quantile, latest half of the training posts (served)",
    "latest_half_final": "the same, only posts whose label was final at the fold's cut (censoring-aware)",
    "all_training": "|residual| quantile, every training post",
    "latest_quarter": "|residual| quantile, latest quarter of the training posts",
    "decay_12h": "weighted |residual| quantile, weights halving every 12 h before the cut",
    "latest_half_by_seen": "EXPLORATORY (added after the rule's result): latest_half with one margin for the "
                           "posts observed by then and one for those not yet (Mondrian)",
}
DECLARED = ("latest_half", "latest_half_final", "all_training", "latest_quarter", "decay_12h")  # the rule's candidates


def calibration_margin(method: str, age: float, train: dict, cut: float, final_at_cut: np.ndarray,
                       cfg: TrainConfig, coverage: float = 0.8, seen: bool | None = None) -> tuple[float, int]:
    """(margin, n) of ``method`` at ``age`` from the fold's training examples (SH point, target, age,
    created_at, position in time order); ``seen``: only the posts observed (or not yet) by then."""
    m = train["age_h"] == age
    if seen is not None:
        m &= (train["log_now"] > 0) == seen
    n_posts = train["n_posts"]
    if method in ("latest_half", "latest_half_final", "latest_quarter"):
        frac = 0.25 if method == "latest_quarter" else cfg.calibration_frac
        m &= train["rank"] >= n_posts - int(round(frac * n_posts))
        if method == "latest_half_final":
            m &= final_at_cut
    res = np.abs(train["target"][m] - train["point"][m])
    if method == "decay_12h":
        w = 0.5 ** ((cut - train["created_at"][m]) / (12 * 3600.0))
        return weighted_conformal_quantile(res, w, coverage), int(m.sum())
    return conformal_quantile(res, coverage), int(m.sum())


def layout_study(table: data.PostTable, spec: features.FeatureSpec, cfg: TrainConfig, layout: Layout,
                 label_wait_h: float) -> dict:
    """Per fold: SH fitted on the fit window (as the trainer), each calibration's margin per evaluation age,
    and per test outcome whether it is inside, whether its label is final, and for a non-final label whether
    it is already above the interval (a certain miss: the final value can only be larger)."""
    complete = data.label_complete(table, spec.horizon_s, spec.bin_s / 2)
    last = np.array([s[-1, 0] if len(s) else np.nan for s in table.seqs])
    folds = data.rolling_origin_folds(table, layout.folds, layout.test_frac, cfg.embargo_h * 3600.0,
                                      label_wait_h * 3600.0 if layout.label_final else None)
    ages = tuple(spec.eval_ages_h)
    out = []
    for train_idx, test_idx, info in folds:
        cut = info["test_from"]
        fit_idx = train_idx[: len(train_idx) - int(round(cfg.val_frac * len(train_idx)))]
        fit = data.make_examples(spec, table.take(fit_idx), tuple(spec.train_ages_h))
        sh = SzaboHuberman().fit(fit.age_h, fit.log_now, fit.target)
        tr = data.make_examples(spec, table.take(train_idx), ages)
        train = {"point": sh.predict(tr.age_h, tr.log_now), "target": tr.target, "age_h": tr.age_h, "log_now": tr.log_now,
                 "created_at": tr.created_at, "rank": tr.post_index, "n_posts": len(train_idx)}
        # final at the cut: the post had left the list (its last observation) before the cut
        final_at_cut = last[train_idx][tr.post_index] <= cut - spec.bin_s / 2
        te = data.make_examples(spec, table.take(test_idx), ages)
        point = sh.predict(te.age_h, te.log_now)
        fold = {"info": info, "age_h": te.age_h, "post": te.post_index, "complete": complete[test_idx][te.post_index],
                "residual": np.abs(te.target - point), "above": te.target - point, "n_cal": {}, "margin": {},
                "n_cal_not_final_at_cut": {a: int((~final_at_cut & (train["age_h"] == a)
                                                  & (train["rank"] >= len(train_idx) - int(round(cfg.calibration_frac * len(train_idx))))).sum())
                                           for a in ages}}
        for method in CALIBRATIONS:
            for a in ages:
                rows = te.age_h == a
                if method == "latest_half_by_seen":
                    seen = te.log_now[rows] > 0
                    margin = np.empty(int(rows.sum()))
                    for group in (True, False):
                        margin[seen == group] = calibration_margin("latest_half", a, train, cut, final_at_cut, cfg,
                                                                   seen=group)[0]
                    fold["margin"][method, a], fold["n_cal"][method, a] = margin, 0
                else:
                    fold["margin"][method, a], fold["n_cal"][method, a] = calibration_margin(
                        method, a, train, cut, final_at_cut, cfg)
        out.append(fold)
    return {"layout": layout, "folds": out, "ages": ages}


def coverage_table(study: dict, method: str, folds: list[int] | None = None) -> dict:
    """Per age: per-fold coverage (all outcomes), pooled coverage and n; on final labels; and the bounds a
    non-final label allows (it counts as covered in the upper bound unless it is already above the interval)."""
    rows = {}
    chosen = [f for k, f in enumerate(study["folds"]) if folds is None or k in folds]
    for a in study["ages"]:
        per, inside, n, inside_c, n_c, lower, upper = [], 0, 0, 0, 0, 0, 0
        for f in chosen:
            m = f["age_h"] == a
            margin = np.maximum(f["margin"][method, a], 0.0)  # a number, or one per test row
            ok = f["residual"][m] <= margin
            c = f["complete"][m]
            sure_miss = ~c & (f["above"][m] > margin)
            per.append(float(ok.mean()))
            inside, n = inside + int(ok.sum()), n + int(m.sum())
            inside_c, n_c = inside_c + int(ok[c].sum()), n_c + int(c.sum())
            lower += int((ok & c).sum())
            upper += int((ok & c).sum() + (~c & ~sure_miss).sum())
        pooled = inside / n
        rows[a] = {"per_fold": per, "pooled": pooled, "n": n, "se": float(np.sqrt(pooled * (1 - pooled) / n)),
                   "complete": inside_c / max(n_c, 1), "n_complete": n_c, "lower": lower / n, "upper": upper / n}
    return rows


def max_deviation(rows: dict, coverage: float = 0.8) -> float:
    return max(abs(r["pooled"] - coverage) for r in rows.values())


def print_layouts(table: data.PostTable, spec: features.FeatureSpec, cfg: TrainConfig) -> dict:
    """Every layout x calibration, then the declared selection on final_6 (folds 1-3 select, 4-6 judge)."""
    label_wait_h = LABEL_WAIT_H.get(cfg.dataset, spec.horizon_s / 3600.0)
    print(f"label wait: {label_wait_h:g} h (test windows of the final_* layouts end that long before the data)")
    fmt = lambda ts: np.datetime_as_string(np.datetime64(int(ts), "s"), unit="m").replace("T", " ")  # noqa: E731
    studies = {}
    for name, layout in LAYOUTS.items():
        st = studies[name] = layout_study(table, spec, cfg, layout, label_wait_h)
        print(f"\n== layout {name}: {layout.what}")
        for k, f in enumerate(st["folds"]):
            i = f["info"]
            n_test = i["n_test_posts"]
            n_final = int(f["complete"][f["age_h"] == st["ages"][0]].sum())
            print(f"  fold {k + 1}: train {i['n_train_posts']} posts .. {fmt(i['train_to'])}, test {fmt(i['test_from'])}"
                  f" .. {fmt(i['test_to'])} ({n_test} posts, {n_final} with a final label); calibration posts "
                  f"not final at the cut: {max(f['n_cal_not_final_at_cut'].values())}")
        for method, what in CALIBRATIONS.items():
            rows = coverage_table(st, method)
            print(f"  {method}: {what}  [max |pooled - 0.8| {max_deviation(rows):.3f}]")
            for a, r in rows.items():
                extra = "" if r["n_complete"] == r["n"] else (
                    f" | final labels {r['complete']:.3f} (n {r['n_complete']}) | bounds {r['lower']:.3f}-{r['upper']:.3f}")
                print(f"    {a:g} h: {' / '.join(f'{c:.3f}' for c in r['per_fold'])} "
                      f"(pooled {r['pooled']:.3f} ± {r['se']:.3f}, n {r['n']}){extra}")
        # decidability: a perfectly calibrated interval on these n, with the served residuals' dependence
        ref = coverage_table(st, "latest_half")
        n_by_age = [r["n"] for r in ref.values()]
        scores = np.stack([np.concatenate([f["residual"][f["age_h"] == a] / max(f["margin"]["latest_half", a], 1e-9)
                                           for f in st["folds"]]) for a in st["ages"]], axis=1)
        corr = normal_score_correlation(scores)
        per_fold_n = [int((f["age_h"] == st["ages"][0]).sum()) for f in st["folds"]]
        print(f"  decidability (perfectly calibrated 80 % interval): P(one age's pooled coverage within 80 ± 3 | "
              f"n {n_by_age[0]}) = {within_tolerance_probability(n_by_age[0]):.3f}; P(all {len(n_by_age)} ages) = "
              f"{all_ages_probability(n_by_age):.3f} if independent, {all_ages_probability(n_by_age, corr):.3f} "
              f"with the ages' dependence (normal-score corr. {corr[np.triu_indices(len(corr), 1)].min():.2f}.."
              f"{corr[np.triu_indices(len(corr), 1)].max():.2f}); per fold (n ~{int(np.mean(per_fold_n))}): one age "
              f"{within_tolerance_probability(int(np.mean(per_fold_n))):.3f}")
    # the declared rule
    st = studies["final_6"]
    early, late = [0, 1, 2], [3, 4, 5]
    dev_early = {m: max_deviation(coverage_table(st, m, early)) for m in DECLARED}
    chosen = min(dev_early, key=dev_early.get)
    late_rows = {m: coverage_table(st, m, late) for m in DECLARED}
    se_late = float(np.mean([r["se"] for r in late_rows["latest_half"].values()]))
    print("\n== declared rule on final_6: max |pooled - 0.8| over the ages, folds 1-3 (select) and 4-6 (held out)")
    for m in DECLARED:
        per_age = lambda rows: " / ".join(f"{r['pooled']:.3f}" for r in rows.values())  # noqa: E731
        print(f"  {m}: folds 1-3 {dev_early[m]:.3f} ({per_age(coverage_table(st, m, early))}); "
              f"folds 4-6 {max_deviation(late_rows[m]):.3f} ({per_age(late_rows[m])}; n "
              f"{next(iter(late_rows[m].values()))['n']})")
    better = max_deviation(late_rows["latest_half"]) - max_deviation(late_rows[chosen]) >= se_late
    print(f"  selected: {chosen}; replaces the served latest_half: "
          f"{'yes' if chosen != 'latest_half' and better else 'no'} (needs a held-out gain >= {se_late:.3f})")
    return studies


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True)
    p.add_argument("--report-dir", type=Path, default=Path("reports"))
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--layouts", action="store_true",
                   help="fold layouts x baseline-residual calibrations, decidability, the declared rule (no run needed)")
    args = p.parse_args(argv)
    cfg = TrainConfig(dataset=args.dataset, embargo_h=12.0 if args.dataset == "reddit" else 48.0)
    spec = spec_for(args.dataset)
    table = data.load_dataset(args.dataset, data_dir=args.data_dir)
    if args.layouts:
        print_layouts(table, spec, cfg)
        return
    npz = np.load(args.report_dir / args.dataset / "intervals.npz")
    cfg = run_config(args.report_dir / args.dataset / "results.json", cfg)
    complete = data.label_complete(table, spec.horizon_s, spec.bin_s / 2)
    folds = data.rolling_origin_folds(table, cfg.folds, cfg.test_frac, cfg.embargo_h * 3600.0,
                                      None if cfg.label_wait_h is None else cfg.label_wait_h * 3600.0)
    prepared = []
    for k, (train_idx, test_idx, _) in enumerate(folds):
        val, test = fold_records(npz, k)
        test["complete"] = rows_complete(table, spec, test_idx, (0.0,) + tuple(spec.eval_ages_h), complete)
        fit_idx = train_idx[: len(train_idx) - int(round(cfg.val_frac * len(train_idx)))]
        fit = data.make_examples(spec, table.take(fit_idx), tuple(spec.train_ages_h))
        every = data.make_examples(spec, table.take(train_idx), tuple(spec.train_ages_h))
        sh = SzaboHuberman().fit(fit.age_h, fit.log_now, fit.target)
        train = {"point": sh.predict(every.age_h, every.log_now), "target": every.target, "age_h": every.age_h,
                 "created_at": every.created_at}
        prepared.append((val, test, train))
    print(f"{args.dataset}: 80 % coverage of the served temporal interval per method; per fold "
          "(all outcomes | final labels [n]), pooled ± binomial s.e., mean width (log1p)")
    for method, what in METHODS.items():
        print(f"\n{method}: {what}")
        for age in spec.eval_ages_h:
            per, per_c, inside, n, inside_c, n_c, widths = [], [], 0, 0, 0, 0, []
            for val, test, train in prepared:
                m = test["age_h"] == age
                lo, hi = interval(method, age, val, train, test["point"][m], test["lo"][m], test["hi"][m])
                y, c = test["target"][m], test["complete"][m]
                ok = (y >= lo) & (y <= hi)
                per.append(f"{ok.mean():.2f}")
                per_c.append(f"{ok[c].mean():.2f}[{c.sum()}]" if c.any() else "-[0]")
                inside, n, inside_c, n_c = inside + ok.sum(), n + len(y), inside_c + ok[c].sum(), n_c + c.sum()
                widths.append(float(np.mean(hi - lo)))
            pooled, pooled_c = inside / n, inside_c / max(n_c, 1)
            se = lambda q, size: np.sqrt(q * (1 - q) / max(size, 1))  # noqa: E731
            print(f"  {age:g} h: {' / '.join(per)} ({pooled:.3f} ± {se(pooled, n):.3f}) | "
                  f"{' / '.join(per_c)} ({pooled_c:.3f} ± {se(pooled_c, n_c):.3f}) | width {np.mean(widths):.2f}")


if __name__ == "__main__":
    main()
