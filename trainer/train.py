"""The training pipeline: data -> the shared feature code -> baselines + MTAF static/temporal -> per-age
evaluation on a chronological split -> report -> ONNX export into model_repo (with the promotion gate)."""

from __future__ import annotations

import json
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
    limit: int | None = None  # first N posts by first appearance (tests, quick runs)
    seed: int = 0
    epochs: int = 6
    min_steps: int = 1500  # small data sets: at least this many optimiser steps (more epochs, at most 200)
    batch_size: int = 512
    lr: float = 2e-3
    weight_decay: float = 1e-4
    d_model: int = 64
    gru_hidden: int = 48
    loss: str = "l1"  # l1 | huber | mse (l1 won on the validation window at every age)
    text: bool = True
    gbt: bool = True
    gbt_max_rows: int = 200_000
    threads: int = 2
    test_frac: float = 0.2
    val_frac: float = 0.1  # last part of the training window, for early stopping
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


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load_table(cfg: TrainConfig) -> D.PostTable:
    return D.load_dataset(cfg.dataset, limit=cfg.limit)


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
    epochs = max(cfg.epochs, min(200, int(np.ceil(cfg.min_steps / max(per_epoch, 1)))))
    steps = epochs * per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(steps, 1), pct_start=0.1)
    loss_fn = _loss_fn(cfg.loss)
    y_all = torch.from_numpy(train.target.astype(np.float32))
    best, best_state, history = np.inf, None, []
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
            best = val_mae
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
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


# ------------------------------------------------------------------------------------------------ pipeline


def run(cfg: TrainConfig) -> dict:
    """The whole pipeline; returns the results dict (also written as JSON under the report dir)."""
    import torch

    t0 = time.time()
    torch.set_num_threads(cfg.threads)
    spec = cfg.spec = cfg.spec or spec_for(cfg.dataset)
    _log(f"loading {cfg.dataset}")
    table = load_table(cfg)
    train_idx, test_idx, window = D.chronological_split(table, cfg.test_frac, cfg.embargo_h * 3600.0)
    n_val = int(round(cfg.val_frac * len(train_idx)))
    fit_idx, val_idx = train_idx[: len(train_idx) - n_val], train_idx[len(train_idx) - n_val :]
    _log(f"{len(table)} posts: train {len(fit_idx)} / val {len(val_idx)} / test {len(test_idx)} (embargo {cfg.embargo_h} h)")

    titles = None
    if cfg.text:
        from popscore.trainer.encoders import cached_title_encodings, text_encoder_available

        if text_encoder_available():
            _log("title token states and embeddings (served all-MiniLM-L6-v2, cached)")
            titles = cached_title_encodings(table.title, progress=cfg.progress)
        else:
            _log("no served text encoder or onnxruntime: training without text (masked)")

    _log("features")
    sub = lambda idx: table.take(idx)  # noqa: E731
    emb = lambda idx: None if titles is None else titles.take(idx)  # noqa: E731
    tr = D.make_examples(spec, sub(fit_idx), spec.train_ages_h, emb(fit_idx))
    va = D.make_examples(spec, sub(val_idx), (0.0,) + tuple(spec.eval_ages_h), emb(val_idx))
    te = D.make_examples(spec, sub(test_idx), (0.0,) + tuple(spec.eval_ages_h), emb(test_idx))
    tr0 = tr.subset(tr.age_h == 0.0)
    va_static = D.make_examples(spec, sub(val_idx), (0.0,), emb(val_idx))
    _log(f"examples: train {len(tr)} val {len(va)} test {len(te)}")

    preds: dict[str, np.ndarray] = {}
    preds["persistence"] = B.persistence(te.log_now)
    sh = B.SzaboHuberman().fit(tr.age_h, tr.log_now, tr.target)
    preds["szabo_huberman"] = sh.predict(te.age_h, te.log_now)
    intervals: dict[str, np.ndarray] = {}
    if cfg.gbt:
        rng = np.random.default_rng(cfg.seed)
        _log("gradient-boosted trees (static)")
        g_static = B.GBT(temporal=False, text=titles is not None, seed=cfg.seed, num_threads=cfg.threads)
        g_static.fit(tr0.inputs_at(None, False, tokens=False), tr0.target)
        preds["gbt_static"] = g_static.predict(te.inputs_at(None, False, tokens=False))
        _log("gradient-boosted trees (temporal)")
        rows = np.sort(rng.choice(len(tr), size=min(len(tr), cfg.gbt_max_rows), replace=False))
        g_temp = B.GBT(temporal=True, text=False, seed=cfg.seed, num_threads=cfg.threads)
        g_temp.fit(tr.subset(rows).inputs_at(None, True, tokens=False), tr.target[rows])
        preds["gbt_temporal"] = g_temp.predict(te.inputs_at(None, True, tokens=False))

    _log("MTAF-static")
    m_static, hist_static = train_mtaf(cfg, tr0, va_static, temporal=False)
    calibration = {"static": calibrate_interval(m_static, va_static, temporal=False)}
    out = predict_mtaf(m_static, te, temporal=False)
    preds["mtaf_static"], intervals["mtaf_static"] = out["log_score"], out["log_interval"]
    preds_words = {"mtaf_static": out["word_attention"]}
    _log("pairwise intrinsic-popularity ranker")
    from popscore.trainer.pairwise import discriminable_pair_accuracy, train_pairwise

    fit_table, test_table = sub(fit_idx), sub(test_idx)
    m_pair, (pa, pb), pair_info = train_pairwise(spec, fit_table, tr0, seed=cfg.seed)
    preds["pairwise_static"] = pa + pb * predict_mtaf(m_pair, te, temporal=False)["log_score"]
    te0 = te.subset(te.age_h == 0.0)
    pair_protocol = {"train": pair_info}
    for name in ("mtaf_static", "gbt_static", "pairwise_static"):
        if name in preds:
            pair_protocol[name] = discriminable_pair_accuracy(test_table, te0, preds[name][te.age_h == 0.0])
    _log(f"pairwise protocol: {pair_protocol}")
    _log("MTAF-temporal")
    m_temp, hist_temp = train_mtaf(cfg, tr, va, temporal=True, word_scores_from=m_static)
    calibration["temporal"] = calibrate_interval(m_temp, va, temporal=True)
    _log(f"interval margins fitted on the validation window: {calibration}")
    out = predict_mtaf(m_temp, te, temporal=True)
    preds["mtaf_temporal"], intervals["mtaf_temporal"] = out["log_score"], out["log_interval"]
    explain = {
        "modality_weights_mean": out["modality_weights"].mean(0).tolist(),
        "time_attention_mean": out["time_attention"].mean(0).tolist(),
    }
    if titles is not None:
        from popscore.trainer.encoders import title_wordpieces
        from popscore.trainer.explain import word_attention_summary

        at_upload = np.flatnonzero(te.age_h == 0.0)  # one row per test post
        words = title_wordpieces([test_table.posts[i].text.title for i in te.post_index[at_upload]])
        explain["word_attention"] = {
            "mtaf_static": word_attention_summary(words, preds_words["mtaf_static"][at_upload]),
            "mtaf_temporal": word_attention_summary(words, out["word_attention"][at_upload]),
        }

    rows_out = []
    static_models = {"mtaf_static", "gbt_static", "pairwise_static"}
    for name, p in preds.items():
        for age in sorted(np.unique(te.age_h)):
            if name in static_models and age != 0.0:
                continue
            if name not in static_models and age == 0.0 and name not in ("mtaf_temporal",):
                continue
            m = te.age_h == age
            iv = intervals[name][m] if name in intervals else None
            r = regression_metrics(te.target[m], p[m], iv)
            rows_out.append({"model": name, "age_h": float(age), **r})
    elapsed = time.time() - t0
    results = {
        "dataset": cfg.dataset,
        "source": table.source,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items() if k != "spec"},
        "gate_window": "validation window: the last 10% of the training posts (also early stopping and the "
                       "interval calibration); the test window (the latest 20%, after the embargo) is only reported",
        "interval_calibration": calibration,
        "feature_spec": spec.to_dict(),
        "feature_spec_hash": spec.hash(),
        "window": window,
        "n_posts": len(table),
        "text": titles is not None,
        "metrics": rows_out,
        "history": {"mtaf_static": hist_static, "mtaf_temporal": hist_temp},
        "explain": explain,
        "pairwise_protocol": pair_protocol,
        "train_seconds": elapsed,
    }
    out_dir = Path(cfg.report_dir) / cfg.dataset
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    np.savez_compressed(out_dir / "predictions.npz", target=te.target, age_h=te.age_h, **{f"pred_{k}": v for k, v in preds.items()})
    _log(f"trained in {elapsed:.0f} s; results in {out_dir}")

    if cfg.model_repo is not None:
        from popscore.trainer.export import export_and_promote

        for kind, model, ex in (("static", m_static, va_static), ("temporal", m_temp, va)):
            metrics = [r for r in rows_out if r["model"] == f"mtaf_{kind}"]
            info = export_and_promote(
                model, kind, ex, Path(cfg.model_repo), spec=spec, metrics=metrics, window=window,
                dataset=cfg.dataset, seed=cfg.seed, force=cfg.force, train_config=results["config"],
            )  # fmt: skip
            results.setdefault("export", {})[kind] = info
            _log(f"export {kind}: {info}")
        (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    return results
