"""Fitting one MTAF model to a training window: the loss, the optimiser loop with early stopping on the
validation window, and batched prediction."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from popscore import features
from popscore.trainer.data import Examples
from popscore.trainer.models import MTAF, build_mtaf, config_for
from popscore.trainer.runtime import log

if TYPE_CHECKING:
    from popscore.trainer.train import TrainConfig


def point_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """l1 | huber | mse on log_score."""
    if name == "mse":
        return F.mse_loss
    if name == "l1":
        return F.l1_loss
    return lambda a, b: F.huber_loss(a, b, delta=0.5)


def pinball_loss(pred: torch.Tensor, y: torch.Tensor, q: float) -> torch.Tensor:
    d = y - pred
    return (q * d).clamp_min(0).mean() + ((q - 1) * d).clamp_min(0).mean()


def interval_loss(log_interval: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The [q10, q90] heads, weighted half as much as the point."""
    return 0.5 * (pinball_loss(log_interval[:, :1], y, 0.1) + pinball_loss(log_interval[:, 1:], y, 0.9))


def epoch_count(epochs: int | None, min_steps: int, steps_per_epoch: int) -> int:
    """An asked-for count is honoured exactly; by default 6 epochs, more (up to 200) on small data sets so
    that training makes at least ``min_steps`` optimiser steps."""
    if epochs is not None:
        return epochs
    return max(6, min(200, int(np.ceil(min_steps / max(steps_per_epoch, 1)))))


def model_inputs(model: MTAF, ex: Examples, rows, temporal: bool, tokens: bool = True) -> dict[str, torch.Tensor]:
    """The rows' inputs the model reads, as tensors."""
    names = model.input_names()
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in ex.inputs_at(rows, temporal, tokens).items()
            if k in names}


def train_mtaf(cfg: TrainConfig, spec: features.FeatureSpec, train: Examples, val: Examples, temporal: bool,
               word_scores_from: MTAF | None = None) -> tuple[MTAF, list[dict]]:
    """Train one MTAF model; returns (model, history), the model at its best validation epoch.
    ``word_scores_from``: a trained MTAF whose word-attention scoring is copied and frozen (the temporal
    model reuses the static model's: learnt freely there, it overfits, since every post is seen at ten ages)."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = build_mtaf(config_for(spec, temporal, d_model=cfg.d_model, gru_hidden=cfg.gru_hidden))
    if word_scores_from is not None:
        scoring = model.encoder.text.attention
        scoring.load_state_dict(word_scores_from.encoder.text.attention.state_dict())
        scoring.requires_grad_(False)

    fit_rows = rng.choice(len(train), size=min(len(train), 50_000), replace=False)
    model.fit_normalisers(model_inputs(model, train, fit_rows, temporal, tokens=False))  # nothing fits on tokens
    model.init_output_bias(float(np.mean(train.target - (train.log_now if temporal else 0.0))))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    per_epoch = int(np.ceil(len(train) / cfg.batch_size))
    epochs = epoch_count(cfg.epochs, cfg.min_steps, per_epoch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(epochs * per_epoch, 1),
                                                pct_start=0.1)
    loss_of_point = point_loss(cfg.loss)
    y_all = torch.from_numpy(train.target.astype(np.float32))
    name = "temporal" if temporal else "static"
    best, best_epoch, best_state, history = np.inf, 0, None, []

    for epoch in range(epochs):
        model.train()
        perm = rng.permutation(len(train))
        total, seen = 0.0, 0
        batches = tqdm(range(0, len(perm), cfg.batch_size), disable=not cfg.progress, leave=False,
                       desc=f"{name} epoch {epoch + 1}/{epochs}")
        for lo in batches:
            rows = np.sort(perm[lo : lo + cfg.batch_size])
            out = model(**model_inputs(model, train, rows, temporal))
            y = y_all[rows].unsqueeze(1)
            loss = loss_of_point(out["log_score"], y) + interval_loss(out["log_interval"], y)
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
            log(f"{name} epoch {epoch + 1}/{epochs}: loss {total / max(seen, 1):.4f} val MAE {val_mae:.4f}")
        if not len(val) or val_mae < best:
            best, best_epoch = val_mae, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif epoch - best_epoch >= cfg.patience:  # small data sets overfit long before their step budget
            log(f"{name}: no better validation MAE for {cfg.patience} epochs, best at epoch {best_epoch + 1}")
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model, history


def predict_mtaf(model: MTAF, ex: Examples, temporal: bool, batch: int = 8192) -> dict[str, np.ndarray]:
    """Every output of the model on ``ex``; ``log_score`` flattened to float64."""
    model.eval()
    outs: dict[str, list] = {}
    with torch.no_grad():
        for lo in range(0, len(ex), batch):
            for k, v in model(**model_inputs(model, ex, slice(lo, lo + batch), temporal)).items():
                outs.setdefault(k, []).append(v.numpy())
    if "word_attention" in outs:  # each batch is cut to its longest title: pad to the longest of all
        width = max(v.shape[1] for v in outs["word_attention"])
        outs["word_attention"] = [np.pad(v, ((0, 0), (0, width - v.shape[1]))) for v in outs["word_attention"]]
    res = {k: np.concatenate(v) for k, v in outs.items()}
    res["log_score"] = res["log_score"][:, 0].astype(np.float64) if "log_score" in res else np.zeros(0)
    return res
