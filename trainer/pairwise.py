"""Pairwise intrinsic-popularity ranker (Dubey & Agarwal; Ding et al.): a siamese, shared-weight scorer
(the MTAF-static network) trained on popularity-discriminable pairs: same author, created close in time
(within ``window_s``), and a clear popularity gap (|log1p difference| >= ``min_gap``). Pairs that share the
author and moment cancel out most of what is not intrinsic to the content. The score is mapped to the
log1p scale by a least-squares line on the training posts so it can be reported beside the regressors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from popscore.trainer import data as D


@dataclass
class PairConfig:
    window_s: float = 3 * 24 * 3600.0
    min_gap: float = 1.0
    max_next: int = 8  # pair each post with at most this many later posts of the same author
    epochs: int = 8
    batch_size: int = 512
    lr: float = 2e-3


def discriminable_pairs(authors: list[str], created_at: np.ndarray, y: np.ndarray, cfg: PairConfig) -> np.ndarray:
    """[n_pairs, 2] indices (i, j) with y[i] > y[j]."""
    order = np.lexsort((created_at, np.asarray(authors, dtype=object).astype(str)))
    a = np.asarray(authors, dtype=object)[order]
    out = []
    for k in range(1, cfg.max_next + 1):
        i, j = order[:-k], order[k:]
        same = (a[:-k] == a[k:]) & (a[:-k] != "") & (np.abs(created_at[j] - created_at[i]) <= cfg.window_s)
        gap = np.abs(y[i] - y[j]) >= cfg.min_gap
        keep = same & gap
        i, j = i[keep], j[keep]
        hi = np.where(y[i] > y[j], i, j)
        lo = np.where(y[i] > y[j], j, i)
        out.append(np.stack([hi, lo], 1))
    return np.concatenate(out) if out else np.zeros((0, 2), int)


def _authors(table: D.PostTable, idx: np.ndarray) -> list[str]:
    return [(table.posts[i].author.id if table.posts[i].author is not None else "") for i in idx]


def train_pairwise(spec, table: D.PostTable, ex0: D.Examples, cfg: PairConfig | None = None, seed: int = 0):
    """``ex0``: the training examples at age 0 (one per post, static inputs). Returns (model, calib, info)."""
    import torch

    from popscore.trainer.models import MTAFStatic, config_for

    cfg = cfg or PairConfig()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    authors = _authors(table, ex0.post_index)
    pairs = discriminable_pairs(authors, ex0.created_at, ex0.target, cfg)
    model = MTAFStatic(config_for(spec, temporal=False))
    names = model.input_names()

    def tensors(rows):
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in ex0.inputs_at(rows, False).items() if k in names}

    model.fit_normalisers(tensors(np.arange(min(len(ex0), 50_000))))
    info = {"n_pairs": int(len(pairs)), "window_s": cfg.window_s, "min_gap": cfg.min_gap}
    if len(pairs) == 0:
        model.eval()
        return model, (float(ex0.target.mean()), 0.0), info
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    for _ in range(cfg.epochs):
        model.train()
        for lo in range(0, len(pairs), cfg.batch_size):
            p = pairs[rng.permutation(len(pairs))[: cfg.batch_size]] if lo == 0 else pairs[rng.integers(0, len(pairs), cfg.batch_size)]
            rows = np.concatenate([p[:, 0], p[:, 1]])
            s = model(**tensors(rows))["log_score"][:, 0]
            diff = s[: len(p)] - s[len(p) :]
            loss = torch.nn.functional.softplus(-diff).mean()  # logistic loss, winner first
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        s = np.concatenate([model(**tensors(np.arange(lo, min(lo + 8192, len(ex0)))))["log_score"][:, 0].numpy()
                            for lo in range(0, len(ex0), 8192)])
    b, a = np.polyfit(s.astype(float), ex0.target, 1)
    info["train_pair_acc"] = float(np.mean(s[pairs[:, 0]] > s[pairs[:, 1]]))
    return model, (float(a), float(b)), info


def discriminable_pair_accuracy(table: D.PostTable, ex0: D.Examples, pred: np.ndarray, cfg: PairConfig | None = None) -> dict:
    """Accuracy on the test window's own discriminable pairs (the intrinsic-popularity protocol)."""
    cfg = cfg or PairConfig()
    pairs = discriminable_pairs(_authors(table, ex0.post_index), ex0.created_at, ex0.target, cfg)
    if len(pairs) == 0:
        return {"n_pairs": 0, "pair_acc": float("nan")}
    return {"n_pairs": int(len(pairs)), "pair_acc": float(np.mean(pred[pairs[:, 0]] > pred[pairs[:, 1]]))}
