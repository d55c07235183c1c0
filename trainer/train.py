"""The training recipe, as named stages over the components in this package (data, baselines, models,
calibration, export):

    load_table -> encode_titles -> for each rolling-origin fold: train_fold
        (examples -> baselines -> MTAF-static -> MTAF-temporal -> blend with Szabo-Huberman -> interval
         calibration -> evaluate on the fold's test window)
    -> summarise the folds -> export the latest fold's model set for the data set's platform

A data set is one platform (Hacker News, Reddit, YouTube), and each platform gets its own model set: the
platforms differ in units (points, upvotes, views), in how early a post is first observed and in cadence
(YouTube's lists are daily), so one set per platform is trained on and bounded by that platform's data.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from popscore import features as F
from popscore.trainer import baselines as B
from popscore.trainer import data as D
from popscore.metrics import regression_metrics


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
    embargo_h: float = 48.0
    report_dir: Path = Path("reports")
    model_repo: Path | None = Path("model_repo")  # None: no export
    force: bool = False  # promote even if the gate says no
    progress: bool = True
    spec: F.FeatureSpec | None = None  # None: spec_for(dataset)


# Observation ages and bins per platform family: HN/Reddit snapshots are ~30-60 min apart, YouTube's
# trending lists are daily (observed_at = end of the trending day).
SPEC_PRESETS: dict[str, F.FeatureSpec] = {
    "default": F.FeatureSpec(),
    "youtube": F.FeatureSpec(
        bin_s=6 * 3600.0, n_bins=16, train_ages_h=(0.0, 12.0, 24.0, 36.0, 48.0, 72.0, 96.0, 144.0),
        eval_ages_h=(24.0, 48.0, 96.0),
    ),
}


def spec_for(dataset: str) -> F.FeatureSpec:
    return SPEC_PRESETS["youtube" if dataset.startswith("youtube") else "default"]


def default_threads() -> int:
    """The cores not busy when training starts: on a loaded 2-core machine two torch threads fight the load
    and each other (ten temporal epochs took 140 s with 2 threads against 22 s with 1)."""
    cores = os.cpu_count() or 1
    busy = int(round(os.getloadavg()[0])) if hasattr(os, "getloadavg") else 0
    return max(1, min(cores, cores - busy))


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load_table(cfg: TrainConfig) -> D.PostTable:
    return D.load_dataset(cfg.dataset, limit=cfg.limit, data_dir=cfg.data_dir)


def platform_of(table: D.PostTable) -> str:
    """The one platform a data set's posts are on: the model set it trains."""
    platforms = sorted(set(table.platform))
    if len(platforms) != 1:
        raise ValueError(f"a data set trains one platform's model set; this one has posts on {platforms}")
    return platforms[0]


# ----------------------------------------------------------------------------------------------- training


def _loss_fn(name: str):
    import torch.nn.functional as Fn

    if name == "mse":
        return Fn.mse_loss
    if name == "l1":
        return Fn.l1_loss
    return lambda a, b: Fn.huber_loss(a, b, delta=0.5)


def _pinball(pred, y, q: float):
    d = y - pred
    return (q * d).clamp_min(0).mean() + ((q - 1) * d).clamp_min(0).mean()


def train_mtaf(
    cfg: TrainConfig, train: D.Examples, val: D.Examples, temporal: bool, word_scores_from=None
):
    """Train one MTAF model; returns (model, history). ``word_scores_from``: a trained MTAF whose word-attention
    scoring is copied and frozen (the temporal model reuses the static model's: learnt freely there, on HN it
    overfitted, since every post is seen at ten ages, and cost ~1.4 % validation MAE)."""
    import torch

    from popscore.trainer.models import MTAF, config_for

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = MTAF(config_for(cfg.spec or spec_for(cfg.dataset), temporal, d_model=cfg.d_model, gru_hidden=cfg.gru_hidden))
    if word_scores_from is not None:
        scoring = model.encoder.text.attention
        scoring.load_state_dict(word_scores_from.encoder.text.attention.state_dict())
        scoring.requires_grad_(False)
    names = model.input_names()

    def tensors(ex: D.Examples, rows, tokens: bool = True) -> dict:
        return {k: torch.from_numpy(np.ascontiguousarray(v))
                for k, v in ex.inputs_at(rows, temporal, tokens).items() if k in names}

    fit_rows = rng.choice(len(train), size=min(len(train), 50_000), replace=False)
    model.fit_normalisers(tensors(train, fit_rows, tokens=False))  # no token states: nothing fits on them
    model.init_output_bias(float(np.mean(train.target - (train.log_now if temporal else 0.0))))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    per_epoch = int(np.ceil(len(train) / cfg.batch_size))
    if cfg.epochs is not None:  # asked for: honoured exactly
        epochs = cfg.epochs
    else:
        epochs = max(6, min(200, int(np.ceil(cfg.min_steps / max(per_epoch, 1)))))
    steps = epochs * per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(steps, 1), pct_start=0.1)
    loss_fn = _loss_fn(cfg.loss)
    y_all = torch.from_numpy(train.target.astype(np.float32))
    best, best_epoch, best_state, history = np.inf, 0, None, []
    from tqdm import tqdm

    for epoch in range(epochs):
        model.train()
        perm = rng.permutation(len(train))
        total, seen = 0.0, 0
        bar = tqdm(range(0, len(perm), cfg.batch_size), disable=not cfg.progress, leave=False,
                   desc=f"{'temporal' if temporal else 'static'} epoch {epoch + 1}/{epochs}")  # fmt: skip
        for lo in bar:
            rows = np.sort(perm[lo : lo + cfg.batch_size])
            out = model(**tensors(train, rows))
            y = y_all[rows].unsqueeze(1)
            loss = loss_fn(out["log_score"], y)
            loss = loss + 0.5 * (_pinball(out["log_interval"][:, :1], y, 0.1) + _pinball(out["log_interval"][:, 1:], y, 0.9))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(rows)
            seen += len(rows)
        pred = predict_mtaf(model, val, temporal)["log_score"]
        val_mae = float(np.abs(pred - val.target).mean()) if len(val) else float("nan")
        history.append({"epoch": epoch + 1, "train_loss": total / max(seen, 1), "val_mae": val_mae})
        if epochs <= 20 or (epoch + 1) % 10 == 0 or epoch + 1 == epochs:
            _log(f"{'temporal' if temporal else 'static'} epoch {epoch + 1}/{epochs}: loss {total / max(seen, 1):.4f} val MAE {val_mae:.4f}")
        if not len(val) or val_mae < best:
            best, best_epoch = val_mae, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif epoch - best_epoch >= cfg.patience:  # small data sets overfit long before their step budget
            _log(f"{'temporal' if temporal else 'static'}: no better validation MAE for {cfg.patience} epochs, "
                 f"best at epoch {best_epoch + 1}")
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model, history


def calibrate_interval(model, val: D.Examples, temporal: bool, coverage: float = 0.8) -> dict:
    """Fit the conformal interval margins on the validation window and store them in the model."""
    from popscore.trainer.calibration import margins_by_age

    out = predict_mtaf(model, val, temporal)
    lo, hi = out["log_interval"][:, 0], out["log_interval"][:, 1]
    age = val.age_h if temporal else np.zeros(len(val))
    edges, margins = margins_by_age(lo, hi, val.target, age, coverage)
    model.set_interval_margin(edges, margins)
    return {"age_edges_h": edges, "margins": margins, "n": int(len(val))}


def predict_mtaf(model, ex: D.Examples, temporal: bool, batch: int = 8192) -> dict[str, np.ndarray]:
    import torch

    model.eval()
    names = model.input_names()
    outs: dict[str, list] = {}
    with torch.no_grad():
        for lo in range(0, len(ex), batch):
            rows = slice(lo, lo + batch)
            inp = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in ex.inputs_at(rows, temporal).items() if k in names}
            for k, v in model(**inp).items():
                outs.setdefault(k, []).append(v.numpy())
    if "word_attention" in outs:  # each batch is cut to its longest title: pad to the longest of all
        width = max(v.shape[1] for v in outs["word_attention"])
        outs["word_attention"] = [np.pad(v, ((0, 0), (0, width - v.shape[1]))) for v in outs["word_attention"]]
    res = {k: np.concatenate(v) for k, v in outs.items()}
    if "log_score" in res:
        res["log_score"] = res["log_score"][:, 0].astype(np.float64)
    else:
        res["log_score"] = np.zeros(0)
    return res


# ------------------------------------------------------------------------------------------------ recipe


def encode_titles(cfg: TrainConfig, table: D.PostTable) -> D.TitleEncodings | None:
    if not cfg.text:
        return None
    from popscore.trainer.encoders import cached_title_encodings, text_encoder_available

    if not text_encoder_available():
        _log("no served text encoder or onnxruntime: training without text (masked)")
        return None
    _log("title token states and embeddings (served all-MiniLM-L6-v2, cached)")
    return cached_title_encodings(table.title, progress=cfg.progress)


def fit_blend(model, val: D.Examples, sh: B.SzaboHuberman, evidence_se: float = 2.0) -> dict:
    """Per training age, the weight w of MTAF against Szabo-Huberman, stored in the model (served inside the
    graph). w minimises the MAE on the validation window, but MTAF must earn it: unless the blend beats the
    baseline there by more than ``evidence_se`` standard errors of the paired difference, the baseline serves
    alone. On
    small data sets (Reddit's validation window has ~50 posts) the best w is mostly noise, and where MTAF
    cannot know more than the baseline (no observation yet) it must not do worse."""
    raw = predict_mtaf(model, val, temporal=True)["log_score"]
    baseline = sh.predict(val.age_h, val.log_now)
    ages = sorted(np.unique(val.age_h).tolist())
    grid = np.linspace(0.0, 1.0, 21)
    weights, coefs, gains = [], [], []
    for age in ages:
        m = val.age_h == age
        err_sh = np.abs(baseline[m] - val.target[m])
        maes = [np.abs(w * raw[m] + (1 - w) * baseline[m] - val.target[m]).mean() for w in grid]
        w = float(grid[int(np.argmin(maes))])
        diff = np.abs(w * raw[m] + (1 - w) * baseline[m] - val.target[m]) - err_sh
        standard_error = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else np.inf
        if diff.mean() + evidence_se * standard_error >= 0:
            w = 0.0
        weights.append(w)
        gains.append(float(np.abs(w * raw[m] + (1 - w) * baseline[m] - val.target[m]).mean() - err_sh.mean()))
        coefs.append(sh.coefficients_at(age))
    from popscore.trainer.calibration import age_edges

    edges = age_edges(ages)
    intercepts, slopes, unobserved = ([c[i] for c in coefs] for i in range(3))
    model.set_blend(edges, weights, intercepts, slopes, unobserved)
    return {"ages_h": ages, "age_edges_h": edges, "mtaf_weight": weights, "sh_intercept": intercepts,
            "sh_slope": slopes, "sh_unobserved": unobserved, "val_mae_change_vs_sh": gains, "n": int(len(val))}


def output_bounds(train: D.Examples, temporal: bool) -> dict:
    """The ranges the training data supports, declared in the exported metadata: the worker clamps scores and
    intervals into ``log_score`` and flags predictions whose inputs fall outside the others."""
    bounds = {"log_score": [float(train.target.min()), float(train.target.max())]}
    if temporal:
        bounds["age_h"] = [float(train.age_h.min()), float(train.age_h.max())]
        bounds["log1p_score_now"] = [float(train.log_now.min()), float(train.log_now.max())]
    return bounds


@dataclass
class FoldResult:
    fold: int
    window: dict
    rows: list[dict]  # metrics per model and age on the fold's test window
    preds: dict[str, np.ndarray]
    test: D.Examples
    test_table: D.PostTable
    models: dict = field(default_factory=dict)  # kind -> trained MTAF
    val: dict = field(default_factory=dict)  # kind -> validation examples (export gate)
    bounds: dict = field(default_factory=dict)  # kind -> output_bounds
    calibration: dict = field(default_factory=dict)
    blend: dict = field(default_factory=dict)
    sh: dict = field(default_factory=dict)
    history: dict = field(default_factory=dict)
    explain: dict = field(default_factory=dict)
    pair_protocol: dict = field(default_factory=dict)


STATIC_MODELS = ("mtaf_static", "gbt_static", "pairwise_static")


def train_fold(cfg: TrainConfig, k: int, table: D.PostTable, titles: D.TitleEncodings | None,
               train_idx: np.ndarray, test_idx: np.ndarray, window: dict, last: bool) -> FoldResult:
    spec = cfg.spec
    n_val = int(round(cfg.val_frac * len(train_idx)))
    fit_idx, val_idx = train_idx[: len(train_idx) - n_val], train_idx[len(train_idx) - n_val :]
    _log(f"fold {k + 1}/{cfg.folds}: train {len(fit_idx)} / val {len(val_idx)} / test {len(test_idx)} posts")
    sub = lambda idx: table.take(idx)  # noqa: E731
    emb = lambda idx: None if titles is None else titles.take(idx)  # noqa: E731
    ages = tuple(spec.train_ages_h)
    tr = D.make_examples(spec, sub(fit_idx), ages, emb(fit_idx))
    va = D.make_examples(spec, sub(val_idx), ages, emb(val_idx))
    te = D.make_examples(spec, sub(test_idx), (0.0,) + tuple(spec.eval_ages_h), emb(test_idx))
    tr0, va0 = tr.subset(tr.age_h == 0.0), va.subset(va.age_h == 0.0)

    preds: dict[str, np.ndarray] = {"persistence": B.persistence(te.log_now)}
    sh = B.SzaboHuberman().fit(tr.age_h, tr.log_now, tr.target)
    preds["szabo_huberman"] = sh.predict(te.age_h, te.log_now)
    intervals: dict[str, np.ndarray] = {}
    if cfg.gbt:
        _log("gradient-boosted trees (static, temporal)")
        g_static = B.GBT(temporal=False, text=titles is not None, seed=cfg.seed, num_threads=cfg.threads)
        g_static.fit(tr0.inputs_at(None, False, tokens=False), tr0.target)
        preds["gbt_static"] = g_static.predict(te.inputs_at(None, False, tokens=False))
        rows = np.sort(np.random.default_rng(cfg.seed).choice(len(tr), size=min(len(tr), cfg.gbt_max_rows),
                                                              replace=False))
        g_temp = B.GBT(temporal=True, text=False, seed=cfg.seed, num_threads=cfg.threads)
        g_temp.fit(tr.subset(rows).inputs_at(None, True, tokens=False), tr.target[rows])
        preds["gbt_temporal"] = g_temp.predict(te.inputs_at(None, True, tokens=False))

    _log("MTAF-static")
    m_static, hist_static = train_mtaf(cfg, tr0, va0, temporal=False)
    calibration = {"static": calibrate_interval(m_static, va0, temporal=False)}
    out = predict_mtaf(m_static, te, temporal=False)
    preds["mtaf_static"], intervals["mtaf_static"] = out["log_score"], out["log_interval"]
    static_words = out["word_attention"]
    pair_protocol = {}
    if last and cfg.pairwise:
        _log("pairwise intrinsic-popularity ranker")
        from popscore.trainer.pairwise import discriminable_pair_accuracy, train_pairwise

        m_pair, (pa, pb), pair_info = train_pairwise(spec, sub(fit_idx), tr0, seed=cfg.seed)
        preds["pairwise_static"] = pa + pb * predict_mtaf(m_pair, te, temporal=False)["log_score"]
        at0 = te.age_h == 0.0
        pair_protocol = {"train": pair_info}
        for name in STATIC_MODELS:
            if name in preds:
                pair_protocol[name] = discriminable_pair_accuracy(sub(test_idx), te.subset(at0), preds[name][at0])

    _log("MTAF-temporal")
    m_temp, hist_temp = train_mtaf(cfg, tr, va, temporal=True, word_scores_from=m_static)
    preds["mtaf_temporal_alone"] = predict_mtaf(m_temp, te, temporal=True)["log_score"]
    blend = fit_blend(m_temp, va, sh, cfg.blend_evidence_se)
    calibration["temporal"] = calibrate_interval(m_temp, va, temporal=True)
    _log(f"blend weights of MTAF by age {dict(zip(blend['ages_h'], blend['mtaf_weight']))}")
    out = predict_mtaf(m_temp, te, temporal=True)
    preds["mtaf_temporal"], intervals["mtaf_temporal"] = out["log_score"], out["log_interval"]
    explain = {"modality_weights_mean": out["modality_weights"].mean(0).tolist(),
               "time_attention_mean": out["time_attention"].mean(0).tolist()}
    if titles is not None and last:
        from popscore.trainer.encoders import title_wordpieces
        from popscore.trainer.explain import word_attention_summary

        at_upload = np.flatnonzero(te.age_h == 0.0)  # one row per test post
        words = title_wordpieces([table.posts[i].text.title for i in test_idx[te.post_index[at_upload]]])
        explain["word_attention"] = {
            "mtaf_static": word_attention_summary(words, static_words[at_upload]),
            "mtaf_temporal": word_attention_summary(words, out["word_attention"][at_upload]),
        }

    rows_out = []
    for name, p in preds.items():
        for age in sorted(np.unique(te.age_h)):
            if (name in STATIC_MODELS) != (age == 0.0) and not (name == "mtaf_temporal" and age == 0.0):
                continue
            m = te.age_h == age
            r = regression_metrics(te.target[m], p[m], intervals[name][m] if name in intervals else None)
            rows_out.append({"fold": k, "model": name, "age_h": float(age), **r})
    return FoldResult(
        fold=k, window=window, rows=rows_out, preds=preds, test=te, test_table=sub(test_idx),
        models={"static": m_static, "temporal": m_temp}, val={"static": va0, "temporal": va},
        bounds={"static": output_bounds(tr0, False), "temporal": output_bounds(tr, True)},
        calibration=calibration, blend=blend, sh={str(a): c for a, c in sh.coef.items()},
        history={"mtaf_static": hist_static, "mtaf_temporal": hist_temp}, explain=explain,
        pair_protocol=pair_protocol,
    )  # fmt: skip


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
        if sh and model != "szabo_huberman":
            # float32 graph against float64 numpy: a served baseline ties within 1e-4
            entry["beats_or_ties_sh_every_fold"] = all(r["mae"] <= sh[r["fold"]] + 1e-4 for r in rows)
        summary.append(entry)
    return summary


def run(cfg: TrainConfig) -> dict:
    """The whole recipe; returns the results dict (also written as JSON under the report dir)."""
    import torch

    t0 = time.time()
    cfg.threads = cfg.threads or default_threads()
    torch.set_num_threads(cfg.threads)
    spec = cfg.spec = cfg.spec or spec_for(cfg.dataset)
    _log(f"loading {cfg.dataset} ({cfg.threads} threads)")
    table = load_table(cfg)
    platform = platform_of(table)
    titles = encode_titles(cfg, table)
    splits = D.rolling_origin_folds(table, cfg.folds, cfg.test_frac, cfg.embargo_h * 3600.0)
    folds = [train_fold(cfg, k, table, titles, *split, last=k == len(splits) - 1) for k, split in enumerate(splits)]
    latest = folds[-1]
    elapsed = time.time() - t0
    results = {
        "dataset": cfg.dataset,
        "platform": platform,
        "source": table.source,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items() if k != "spec"},
        "gate_window": "validation window: the last 10% of the latest fold's training posts (also early stopping, "
                       "the baseline blend and the interval calibration); the test windows are only reported",
        "interval_calibration": latest.calibration,
        "blend": latest.blend,
        "bounds": latest.bounds,
        "feature_spec": spec.to_dict(),
        "feature_spec_hash": spec.hash(),
        "window": latest.window,
        "n_posts": len(table),
        "text": titles is not None,
        "metrics": latest.rows,  # the exported models' fold
        "folds": [{"fold": f.fold, "window": f.window, "metrics": f.rows, "blend": f.blend} for f in folds],
        "fold_summary": summarise_folds(folds),
        "history": latest.history,
        "explain": latest.explain,
        "pairwise_protocol": latest.pair_protocol,
        "train_seconds": elapsed,
    }
    out_dir = Path(cfg.report_dir) / cfg.dataset
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    te = latest.test
    np.savez_compressed(out_dir / "predictions.npz", target=te.target, age_h=te.age_h,
                        **{f"pred_{k}": v for k, v in latest.preds.items()})
    _log(f"trained in {elapsed:.0f} s; results in {out_dir}")
    if cfg.model_repo is not None:
        results["export"] = export_model_set(cfg, platform, latest)
        (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    return results


def export_model_set(cfg: TrainConfig, platform: str, fold: FoldResult) -> dict:
    """The latest fold's static and temporal models -> candidates -> promotion gate -> ``model_repo``."""
    from popscore.trainer.export import export_and_promote

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
            train_config={k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items() if k != "spec"},
            extra_metadata=extra,
        )  # fmt: skip
        exported[kind] = info
        _log(f"export {kind}: {info}")
    return exported
