"""Interval calibrations compared on a training run's folds, without retraining: reads the uncalibrated
intervals ``popscore train`` saves (``<report-dir>/<dataset>/intervals.npz``) and prints, per method, the
80 % coverage per fold and age on every test outcome and on the final labels only (data.label_complete),
pooled over the folds, with the binomial standard error of the pooled figure and the mean width.

    python -m popscore.tools.interval_study --dataset reddit [--report-dir reports]

The methods that calibrate on training-window posts refit Szabo-Huberman on the fold's fit window for the
served point there: they describe the ages where the served point is the baseline alone (blend weight 0).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from popscore import features
from popscore.settings import ScoreSettings
from popscore.trainer import data
from popscore.trainer.baselines import SzaboHuberman
from popscore.trainer.calibration import conformal_margin, conformal_quantile, residual_margin
from popscore.trainer.train import TrainConfig, spec_for

METHODS = {
    "cqr_validation_per_age": "head interval + margin, validation window, per age (before this change)",
    "cqr_validation_neighbour_ages": "head interval + margin, validation window, the age and its neighbours",
    "normalised_validation_per_age": "head interval + q x its width, validation window, per age",
    "residual_validation_per_age": "point -+ |residual| quantile, validation window, per age",
    "residual_training_all": "point -+ |residual| quantile, every training post, per age",
    "residual_training_latest_half": "point -+ |residual| quantile, latest half of the training posts (served)",
}


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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True)
    p.add_argument("--report-dir", type=Path, default=Path("reports"))
    p.add_argument("--data-dir", type=Path, default=None)
    args = p.parse_args(argv)
    npz = np.load(args.report_dir / args.dataset / "intervals.npz")
    cfg = TrainConfig(dataset=args.dataset, embargo_h=12.0 if args.dataset == "reddit" else 48.0)
    spec = spec_for(args.dataset)
    table = data.load_dataset(args.dataset, data_dir=args.data_dir)
    complete = data.label_complete(table, spec.horizon_s, spec.bin_s / 2)
    folds = data.rolling_origin_folds(table, cfg.folds, cfg.test_frac, cfg.embargo_h * 3600.0)
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
                per_c.append(f"{ok[c].mean():.2f}[{c.sum()}]" if c.any() else f"-[0]")
                inside, n, inside_c, n_c = inside + ok.sum(), n + len(y), inside_c + ok[c].sum(), n_c + c.sum()
                widths.append(float(np.mean(hi - lo)))
            pooled, pooled_c = inside / n, inside_c / max(n_c, 1)
            se = lambda q, size: np.sqrt(q * (1 - q) / max(size, 1))  # noqa: E731
            print(f"  {age:g} h: {' / '.join(per)} ({pooled:.3f} ± {se(pooled, n):.3f}) | "
                  f"{' / '.join(per_c)} ({pooled_c:.3f} ± {se(pooled_c, n_c):.3f}) | width {np.mean(widths):.2f}")


if __name__ == "__main__":
    main()
