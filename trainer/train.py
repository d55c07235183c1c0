"""The training recipe: ``run`` is a short sequence of named stages over the components of this package
(data, baselines, models, fitting, calibration, export):

    load_table -> encode_titles -> for each rolling-origin fold, train_fold:
        fold_examples -> baselines -> MTAF-static -> [pairwise ranker] -> MTAF-temporal (blended with
        Szabo-Huberman, interval calibrated) -> fold_metrics on the fold's test window
    -> summarise the folds -> write the results -> export the latest fold's model set

A data set is one platform (Hacker News, Reddit, YouTube), and each platform gets its own model set: the
platforms differ in units (points, upvotes, views), in how early a post is first observed and in cadence
(YouTube's lists are daily), so one set per platform is trained on and bounded by that platform's data.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from popscore import features
from popscore.metrics import regression_metrics
from popscore.trainer import data
from popscore.trainer.baselines import GBT, SzaboHuberman, persistence
from popscore.trainer.calibration import calibrate_interval, fit_blend, uncalibrated
from popscore.trainer.data import Examples, PostTable, TitleEncodings
from popscore.trainer.export import export_and_promote, output_bounds
from popscore.trainer.fitting import predict_mtaf, train_mtaf
from popscore.trainer.models import MTAF, MTAFStatic
from popscore.trainer.runtime import default_threads, log


@dataclass
class TrainConfig:
    dataset: str = "hackernews"
    data_dir: Path | None = None  # None: ../shared/data (or $POPSCORE_SHARED_DATA)
    limit: int | None = None  # first N posts by first appearance (tests, quick runs)
    seed: int = 0
    epochs: int | None = None  # None: 6, and at least min_steps optimiser steps on small data sets
    min_steps: int = 1500
    patience: int = 25  # epochs without a better validation MAE before training stops
    blend_evidence_se: float = 2.0  # MTAF gets a weight at an age only if it beats SH by this many std. errors
    batch_size: int = 512
    lr: float = 2e-3
    weight_decay: float = 1e-4
    d_model: int = 64
    gru_hidden: int = 48
    loss: str = "l1"  # l1 | huber | mse (l1 won on the validation window at every age)
    text: bool = True
    gbt: bool = True
    gbt_max_rows: int = 200_000
    pairwise: bool = True  # the intrinsic-popularity ranker, in the last fold
    threads: int | None = None  # None: the cores idle when training starts (at least 1)
    folds: int = 3  # rolling-origin folds; the latest one's models are exported
    test_frac: float = 0.3  # share of posts (the latest) in the folds' test windows together
    val_frac: float = 0.1  # last part of each fold's training window: early stopping, blend, intervals, gate
    calibration_frac: float = 0.5  # latest part of the training window: the served baseline's interval margins
    embargo_h: float = 48.0
    # posts created less than this before the data's end are in no test window: their labels (the last
    # observation) may still grow, so an interval cannot be judged on them (Reddit: 12 h; None: every post)
    label_wait_h: float | None = None
    report_dir: Path = Path("reports")
    model_repo: Path | None = Path("model_repo")  # None: no export
    force: bool = False  # promote even if the gate says no
    progress: bool = True
    spec: features.FeatureSpec | None = None  # None: spec_for(dataset)


# Observation ages and bins per platform family: HN/Reddit snapshots are ~30-60 min apart, YouTube's
# trending lists are daily (observed_at = end of the trending day).
SPEC_PRESETS: dict[str, features.FeatureSpec] = {
    "default": features.FeatureSpec(),
    "youtube": features.FeatureSpec(
        bin_s=6 * 3600.0, n_bins=16, train_ages_h=(0.0, 12.0, 24.0, 36.0, 48.0, 72.0, 96.0, 144.0),
        eval_ages_h=(24.0, 48.0, 96.0),
    ),
}


STATIC_MODELS = ("mtaf_static", "gbt_static", "pairwise_static")  # evaluated at upload only


def spec_for(dataset: str) -> features.FeatureSpec:
    return SPEC_PRESETS["youtube" if dataset.startswith("youtube") else "default"]


# ------------------------------------------------------------------------------------------------ recipe


def run(cfg: TrainConfig) -> dict:
    """The whole recipe; returns the results dict (also written as JSON under the report dir)."""
    started = time.time()
    prepare(cfg)
    log(f"loading {cfg.dataset} ({cfg.threads} threads)")
    table = load_table(cfg)
    platform = platform_of(table)
    titles = encode_titles(cfg, table)
    splits = data.rolling_origin_folds(table, cfg.folds, cfg.test_frac, cfg.embargo_h * 3600.0,
                                       None if cfg.label_wait_h is None else cfg.label_wait_h * 3600.0)
    complete = data.label_complete(table, cfg.spec.horizon_s, cfg.spec.bin_s / 2)
    folds = [train_fold(cfg, k, table, titles, *split, last=k == len(splits) - 1, label_complete=complete)
             for k, split in enumerate(splits)]
    results = summarise_run(cfg, table, platform, titles, folds, train_seconds=time.time() - started)
    out_dir = write_results(cfg, results, folds[-1])
    write_interval_records(cfg, folds)
    log(f"trained in {results['train_seconds']:.0f} s; results in {out_dir}")
    if cfg.model_repo is not None:
        results["export"] = export_model_set(cfg, platform, folds[-1])
        (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    return results


def train_fold(cfg: TrainConfig, k: int, table: PostTable, titles: TitleEncodings | None,
               train_idx: np.ndarray, test_idx: np.ndarray, window: dict, last: bool,
               label_complete: np.ndarray | None = None) -> FoldResult:
    """One rolling-origin fold, every model evaluated on its test window; the pairwise ranker and the word
    attention summaries in the last fold only. ``label_complete`` (per post of ``table``,
    data.label_complete): the test outcomes intervals are judged on."""
    ex = fold_examples(cfg, k, table, titles, train_idx, test_idx)
    complete = (np.ones(len(ex.test), bool) if label_complete is None
                else np.asarray(label_complete)[test_idx][ex.test.post_index])
    window = {**window, "n_test_posts_label_complete": int(np.asarray(label_complete)[test_idx].sum())
              if label_complete is not None else int(len(test_idx))}
    sh = SzaboHuberman().fit(ex.train.age_h, ex.train.log_now, ex.train.target)
    preds = {"persistence": persistence(ex.test.log_now), "szabo_huberman": sh.predict(ex.test.age_h, ex.test.log_now)}
    if cfg.gbt:
        preds.update(fit_trees(cfg, ex, text=titles is not None))
    static = train_static(cfg, ex)
    preds["mtaf_static"] = static.test_out["log_score"]
    pair_protocol = {}
    if last and cfg.pairwise:
        preds["pairwise_static"], pair_protocol = train_pair_ranker(cfg, table, ex, preds)
    temporal, blend, preds["mtaf_temporal_alone"] = train_temporal(cfg, ex, sh, static.model)
    preds["mtaf_temporal"] = temporal.test_out["log_score"]
    intervals = {"mtaf_static": static.test_out["log_interval"], "mtaf_temporal": temporal.test_out["log_interval"]}
    return FoldResult(
        fold=k, window=window, rows=fold_metrics(k, preds, intervals, ex.test, complete), preds=preds, test=ex.test,
        models={"static": static.model, "temporal": temporal.model},
        val={"static": ex.val_at_upload, "temporal": ex.val},
        bounds={"static": output_bounds(ex.train_at_upload, False), "temporal": output_bounds(ex.train, True)},
        calibration={"static": static.calibration, "temporal": temporal.calibration}, blend=blend,
        uncalibrated={"static": static.uncalibrated, "temporal": temporal.uncalibrated},
        history={"mtaf_static": static.history, "mtaf_temporal": temporal.history},
        explain=explain(table, ex, static, temporal, words=titles is not None and last), pair_protocol=pair_protocol,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------ stages


def prepare(cfg: TrainConfig) -> None:
    """Fill in what the configuration leaves to the run: threads (also torch's) and the feature spec."""
    cfg.threads = cfg.threads or default_threads()
    torch.set_num_threads(cfg.threads)
    cfg.spec = cfg.spec or spec_for(cfg.dataset)


def load_table(cfg: TrainConfig) -> PostTable:
    return data.load_dataset(cfg.dataset, limit=cfg.limit, data_dir=cfg.data_dir)


def platform_of(table: PostTable) -> str:
    """The one platform a data set's posts are on: the model set it trains."""
    platforms = sorted(set(table.platform))
    if len(platforms) != 1:
        raise ValueError(f"a data set trains one platform's model set; this one has posts on {platforms}")
    return platforms[0]


def encode_titles(cfg: TrainConfig, table: PostTable) -> TitleEncodings | None:
    if not cfg.text:
        return None
    from popscore.trainer.encoders import cached_title_encodings, text_encoder_available

    if not text_encoder_available():
        log("no served text encoder or onnxruntime: training without text (masked)")
        return None
    log("title token states and embeddings (served all-MiniLM-L6-v2, cached)")
    return cached_title_encodings(table.title, progress=cfg.progress)


@dataclass
class FoldExamples:
    """A fold's examples at the spec's ages: training, validation (the training window's last posts) and
    test windows, and the first two at upload only (what MTAF-static and the static baselines see)."""

    fit_idx: np.ndarray  # the training posts, without the validation ones
    test_idx: np.ndarray
    train: Examples
    val: Examples
    calibration: Examples  # the latest calibration_frac of the training posts (validation ones included)
    test: Examples  # at upload and at the spec's evaluation ages
    train_at_upload: Examples
    val_at_upload: Examples


def fold_examples(cfg: TrainConfig, k: int, table: PostTable, titles: TitleEncodings | None,
                  train_idx: np.ndarray, test_idx: np.ndarray) -> FoldExamples:
    spec = cfg.spec
    n_val = int(round(cfg.val_frac * len(train_idx)))
    fit_idx, val_idx = train_idx[: len(train_idx) - n_val], train_idx[len(train_idx) - n_val :]
    log(f"fold {k + 1}/{cfg.folds}: train {len(fit_idx)} / val {len(val_idx)} / test {len(test_idx)} posts")

    def examples(idx: np.ndarray, ages: tuple[float, ...]) -> Examples:
        return data.make_examples(spec, table.take(idx), ages, None if titles is None else titles.take(idx))

    train = examples(fit_idx, tuple(spec.train_ages_h))
    val = examples(val_idx, tuple(spec.train_ages_h))
    test = examples(test_idx, (0.0,) + tuple(spec.eval_ages_h))
    n_cal = int(round(cfg.calibration_frac * len(train_idx)))
    calibration = examples(train_idx[len(train_idx) - n_cal:], tuple(spec.train_ages_h))
    return FoldExamples(fit_idx, test_idx, train, val, calibration, test, train.subset(train.age_h == 0.0),
                        val.subset(val.age_h == 0.0))


def fit_trees(cfg: TrainConfig, ex: FoldExamples, text: bool) -> dict[str, np.ndarray]:
    """Gradient-boosted trees on the same features: static (at upload, with the title embedding) and
    temporal (on a sample of the training examples); their predictions on the test window."""
    log("gradient-boosted trees (static, temporal)")
    static = GBT(temporal=False, text=text, seed=cfg.seed, num_threads=cfg.threads)
    static.fit(ex.train_at_upload.inputs_at(None, False, tokens=False), ex.train_at_upload.target)
    rows = np.sort(np.random.default_rng(cfg.seed).choice(len(ex.train), size=min(len(ex.train), cfg.gbt_max_rows),
                                                          replace=False))
    temporal = GBT(temporal=True, text=False, seed=cfg.seed, num_threads=cfg.threads)
    temporal.fit(ex.train.subset(rows).inputs_at(None, True, tokens=False), ex.train.target[rows])
    return {"gbt_static": static.predict(ex.test.inputs_at(None, False, tokens=False)),
            "gbt_temporal": temporal.predict(ex.test.inputs_at(None, True, tokens=False))}


@dataclass
class Trained:
    """One trained MTAF model and what the fold learnt about it."""

    model: MTAF
    history: list[dict]
    calibration: dict
    test_out: dict[str, np.ndarray]  # every output on the fold's test window, as served
    uncalibrated: dict[str, dict[str, np.ndarray]]  # "val"/"test" -> interval_record before calibration


def interval_record(model: MTAF, ex: Examples, temporal: bool) -> dict[str, np.ndarray]:
    """The served point and the interval before calibration (the model's margins still zero), with the
    outcome, age and creation time of each example: what interval calibration can be fitted and judged on."""
    return {**uncalibrated(model, ex, temporal), "created_at": ex.created_at, "log_now": ex.log_now}


def train_static(cfg: TrainConfig, ex: FoldExamples) -> Trained:
    log("MTAF-static")
    model, history = train_mtaf(cfg, cfg.spec, ex.train_at_upload, ex.val_at_upload, temporal=False)
    raw = {"val": interval_record(model, ex.val_at_upload, False), "test": interval_record(model, ex.test, False)}
    calibration = calibrate_interval(model, ex.val_at_upload, temporal=False)
    return Trained(model, history, calibration, predict_mtaf(model, ex.test, temporal=False), raw)


def train_pair_ranker(cfg: TrainConfig, table: PostTable, ex: FoldExamples,
                      preds: dict[str, np.ndarray]) -> tuple[np.ndarray, dict]:
    """The intrinsic-popularity ranker's predictions on the test window, and every static model's accuracy
    on the test window's discriminable pairs."""
    log("pairwise intrinsic-popularity ranker")
    from popscore.trainer.pairwise import discriminable_pair_accuracy, train_pairwise

    ranker, (intercept, slope), info = train_pairwise(cfg.spec, table.take(ex.fit_idx), ex.train_at_upload,
                                                      seed=cfg.seed)
    ranked = intercept + slope * predict_mtaf(ranker, ex.test, temporal=False)["log_score"]
    at_upload = ex.test.age_h == 0.0
    scored = {**preds, "pairwise_static": ranked}
    protocol = {"train": info}
    for name in STATIC_MODELS:
        if name in scored:
            protocol[name] = discriminable_pair_accuracy(table.take(ex.test_idx), ex.test.subset(at_upload),
                                                         scored[name][at_upload])
    return ranked, protocol


def train_temporal(cfg: TrainConfig, ex: FoldExamples, sh: SzaboHuberman,
                   static: MTAFStatic) -> tuple[Trained, dict, np.ndarray]:
    """MTAF-temporal (reusing the static model's word-attention scores), then its blend with Szabo-Huberman
    and its interval calibration; also returns its test predictions before the blend."""
    log("MTAF-temporal")
    model, history = train_mtaf(cfg, cfg.spec, ex.train, ex.val, temporal=True, word_scores_from=static)
    alone = predict_mtaf(model, ex.test, temporal=True)["log_score"]
    blend = fit_blend(model, ex.val, sh, cfg.blend_evidence_se)
    raw = {"val": interval_record(model, ex.val, True), "test": interval_record(model, ex.test, True)}
    baseline_ages = {age for age, w in zip(blend["ages_h"], blend["mtaf_weight"]) if w == 0.0}
    calibration = calibrate_interval(model, ex.val, temporal=True, calibration=ex.calibration,
                                     baseline_ages=baseline_ages)
    log(f"blend weights of MTAF by age {dict(zip(blend['ages_h'], blend['mtaf_weight']))}")
    return Trained(model, history, calibration, predict_mtaf(model, ex.test, temporal=True), raw), blend, alone


def explain(table: PostTable, ex: FoldExamples, static: Trained, temporal: Trained, words: bool) -> dict:
    """Mean modality and time attention of the served temporal model on the test window; with ``words``,
    what both models' word attention reads in the test titles."""
    out = temporal.test_out
    summary = {"modality_weights_mean": out["modality_weights"].mean(0).tolist(),
               "time_attention_mean": out["time_attention"].mean(0).tolist()}
    if words:
        from popscore.trainer.encoders import title_wordpieces
        from popscore.trainer.explain import word_attention_summary

        at_upload = np.flatnonzero(ex.test.age_h == 0.0)  # one row per test post
        titles = title_wordpieces([table.posts[i].text.title for i in ex.test_idx[ex.test.post_index[at_upload]]])
        summary["word_attention"] = {
            "mtaf_static": word_attention_summary(titles, static.test_out["word_attention"][at_upload]),
            "mtaf_temporal": word_attention_summary(titles, out["word_attention"][at_upload]),
        }
    return summary


def fold_metrics(k: int, preds: dict[str, np.ndarray], intervals: dict[str, np.ndarray], test: Examples,
                 label_complete: np.ndarray | None = None) -> list[dict]:
    """Metrics per model and age on the test window: the static models at upload, the temporal ones at the
    evaluation ages, the served MTAF-temporal at both. An interval's coverage is also given on the outcomes
    whose label is final (``label_complete`` per test row; ``coverage_80_complete``, ``n_complete``)."""
    complete = np.ones(len(test), bool) if label_complete is None else np.asarray(label_complete, bool)
    rows = []
    for name, pred in preds.items():
        for age in sorted(np.unique(test.age_h)):
            if (name in STATIC_MODELS) != (age == 0.0) and not (name == "mtaf_temporal" and age == 0.0):
                continue
            m = test.age_h == age
            r = regression_metrics(test.target[m], pred[m], intervals[name][m] if name in intervals else None)
            if name in intervals:
                mc = m & complete
                lo, hi = intervals[name][mc, 0], intervals[name][mc, 1]
                y = test.target[mc]
                r["n_complete"] = int(mc.sum())
                r["coverage_80_complete"] = float(np.mean((y >= lo) & (y <= hi))) if mc.any() else None
            rows.append({"fold": k, "model": name, "age_h": float(age), **r})
    return rows


@dataclass
class FoldResult:
    """What a fold leaves for the results and, for the latest fold, the export."""

    fold: int
    window: dict
    rows: list[dict]  # metrics per model and age on the fold's test window
    preds: dict[str, np.ndarray]  # model -> predictions on the test window
    test: Examples
    models: dict[str, MTAF]  # kind (static, temporal) -> trained model
    val: dict[str, Examples]  # kind -> validation examples (the export gate's)
    bounds: dict[str, dict]  # kind -> output_bounds
    calibration: dict[str, dict]  # kind -> interval calibration
    uncalibrated: dict[str, dict]  # kind -> "val"/"test" -> interval_record
    blend: dict
    history: dict[str, list[dict]]
    explain: dict
    pair_protocol: dict


def summarise_folds(folds: list[FoldResult]) -> list[dict]:
    """Per model and age: the MAE, SRCC and coverage on each fold and their mean, and whether the model's
    MAE is at most Szabo-Huberman's on every fold."""
    by: dict[tuple[str, float], list[dict]] = {}
    for fold in folds:
        for r in fold.rows:
            by.setdefault((r["model"], r["age_h"]), []).append(r)
    summary = []
    for (model, age), rows in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        sh = {r["fold"]: r["mae"] for r in by.get(("szabo_huberman", age), [])}
        entry = {"model": model, "age_h": age, "folds": [r["fold"] for r in rows], "n": [r["n"] for r in rows],
                 "mae": [r["mae"] for r in rows], "srcc": [r["srcc"] for r in rows],
                 "mae_mean": float(np.mean([r["mae"] for r in rows]))}
        if all("coverage_80" in r for r in rows):
            entry["coverage_80"] = [r["coverage_80"] for r in rows]
            n = np.array(entry["n"], float)
            entry["coverage_80_pooled"] = float(np.dot(entry["coverage_80"], n) / n.sum()) if n.sum() else None
        if all("n_complete" in r for r in rows):
            entry["n_complete"] = [r["n_complete"] for r in rows]
            entry["coverage_80_complete"] = [r["coverage_80_complete"] for r in rows]
            inside = sum(c * n for c, n in zip(entry["coverage_80_complete"], entry["n_complete"]) if n)
            total = sum(entry["n_complete"])
            entry["coverage_80_complete_pooled"] = float(inside / total) if total else None
        if sh and model != "szabo_huberman":
            # float32 graph against float64 numpy: a served baseline ties within 1e-4
            entry["beats_or_ties_sh_every_fold"] = all(r["mae"] <= sh[r["fold"]] + 1e-4 for r in rows)
        summary.append(entry)
    return summary


def config_record(cfg: TrainConfig) -> dict:
    """The configuration as JSON (the feature spec is recorded on its own)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items() if k != "spec"}


def summarise_run(cfg: TrainConfig, table: PostTable, platform: str, titles: TitleEncodings | None,
                  folds: list[FoldResult], train_seconds: float) -> dict:
    """The results: the latest fold's (the exported models') in full, every fold's metrics and blend."""
    latest = folds[-1]
    return {
        "dataset": cfg.dataset,
        "platform": platform,
        "source": table.source,
        "config": config_record(cfg),
        "gate_window": "validation window: the last 10% of the latest fold's training posts (also early stopping, "
                       "the baseline blend and the interval calibration); the test windows are only reported",
        "interval_calibration": latest.calibration,
        "blend": latest.blend,
        "bounds": latest.bounds,
        "feature_spec": cfg.spec.to_dict(),
        "feature_spec_hash": cfg.spec.hash(),
        "window": latest.window,
        "n_posts": len(table),
        "text": titles is not None,
        "metrics": latest.rows,  # the exported models' fold
        "folds": [{"fold": f.fold, "window": f.window, "metrics": f.rows, "blend": f.blend} for f in folds],
        "fold_summary": summarise_folds(folds),
        "history": latest.history,
        "explain": latest.explain,
        "pairwise_protocol": latest.pair_protocol,
        "train_seconds": train_seconds,
    }


def write_results(cfg: TrainConfig, results: dict, latest: FoldResult) -> Path:
    """results.json and the latest fold's test predictions (predictions.npz) under the report dir."""
    out_dir = Path(cfg.report_dir) / cfg.dataset
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    te = latest.test
    np.savez_compressed(out_dir / "predictions.npz", target=te.target, age_h=te.age_h,
                        **{f"pred_{k}": v for k, v in latest.preds.items()})
    return out_dir


def write_interval_records(cfg: TrainConfig, folds: list[FoldResult]) -> Path:
    """Every fold's uncalibrated intervals on its validation and test windows (intervals.npz, keys
    ``fold<k>/<kind>/<val|test>/<field>``): calibration methods can be compared without retraining."""
    out = Path(cfg.report_dir) / cfg.dataset / "intervals.npz"
    out.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"fold{f.fold}/{kind}/{split}/{field}": v for f in folds for kind, splits in f.uncalibrated.items()
              for split, rec in splits.items() for field, v in rec.items()}
    np.savez_compressed(out, **arrays)
    return out


def export_model_set(cfg: TrainConfig, platform: str, fold: FoldResult) -> dict:
    """The latest fold's static and temporal models -> candidates -> promotion gate -> ``model_repo``."""
    exported = {}
    for kind in ("static", "temporal"):
        metrics = [r for r in fold.rows if r["model"] == f"mtaf_{kind}"]
        extra = {"bounds": fold.bounds[kind], "interval_calibration": fold.calibration[kind]}
        if kind == "temporal":
            extra["baseline"] = {"szabo_huberman": {
                "age_h": fold.blend["ages_h"], "intercept": fold.blend["sh_intercept"], "slope": fold.blend["sh_slope"],
                "unobserved": fold.blend["sh_unobserved"]},
                "mtaf_weight": fold.blend["mtaf_weight"], "age_edges_h": fold.blend["age_edges_h"]}  # fmt: skip
        info = export_and_promote(
            fold.models[kind], kind, fold.val[kind], Path(cfg.model_repo), spec=cfg.spec, metrics=metrics,
            window=fold.window, dataset=cfg.dataset, platform=platform, seed=cfg.seed, force=cfg.force,
            train_config=config_record(cfg), extra_metadata=extra,
        )  # fmt: skip
        exported[kind] = info
        log(f"export {kind}: {info}")
    return exported
