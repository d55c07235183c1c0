"""Evaluation metrics on log1p(score) targets, shared by the trainer (offline evaluation) and the stream
worker (online accuracy).

NDCG@10: rank the evaluated posts (all test posts at one observation age) by predicted log1p score; the
gain of a post is its realised log1p(final score); DCG@10 = sum_{i=1..10} gain_i / log2(i + 1);
NDCG@10 = DCG@10 of the predicted order / DCG@10 of the ideal (true) order, in [0, 1].
Median-split accuracy (Pay Attention to Virality): popular = above the median of the realised targets;
predicted popular = prediction above the median of the predictions; accuracy of that binary call.
Pairwise accuracy (intrinsic popularity): on up to 20,000 random pairs with different realised targets
(fixed seed), the fraction ordered the same way by the prediction (ties count as half).
"""

from __future__ import annotations

import numpy as np


def _rank(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(len(x), dtype=np.float64)
    # average ties
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], len(xs)]
    for s, e in zip(starts, ends):
        if e - s > 1:
            ranks[order[s:e]] = (s + e - 1) / 2.0
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2:
        return float("nan")
    ra, rb = _rank(np.asarray(a, float)), _rank(np.asarray(b, float))
    sa, sb = ra.std(), rb.std()
    if sa == 0 or sb == 0:
        return float("nan")
    return float(((ra - ra.mean()) * (rb - rb.mean())).mean() / (sa * sb))


def ndcg_at_k(y: np.ndarray, pred: np.ndarray, k: int = 10) -> float:
    if len(y) == 0:
        return float("nan")
    k = min(k, len(y))
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (y[np.argsort(-pred, kind="mergesort")[:k]] * disc).sum()
    idcg = (np.sort(y)[::-1][:k] * disc).sum()
    return float(dcg / idcg) if idcg > 0 else float("nan")


def pairwise_accuracy(y: np.ndarray, pred: np.ndarray, n_pairs: int = 20_000, seed: int = 0) -> float:
    if len(y) < 2:
        return float("nan")
    rng = np.random.default_rng(seed)
    i = rng.integers(0, len(y), n_pairs)
    j = rng.integers(0, len(y), n_pairs)
    keep = y[i] != y[j]
    i, j = i[keep], j[keep]
    if len(i) == 0:
        return float("nan")
    s = np.sign(pred[i] - pred[j]) * np.sign(y[i] - y[j])
    return float(np.mean(np.where(s == 0, 0.5, s > 0)))


def regression_metrics(y: np.ndarray, pred: np.ndarray, interval: np.ndarray | None = None) -> dict:
    y = np.asarray(y, float)
    pred = np.asarray(pred, float)
    err = pred - y
    var = y.var()
    out = {
        "n": int(len(y)),
        "mae": float(np.abs(err).mean()) if len(y) else float("nan"),
        "mse": float((err**2).mean()) if len(y) else float("nan"),
        "r2": float(1 - (err**2).mean() / var) if len(y) and var > 0 else float("nan"),
        "srcc": spearman(y, pred),
        "ndcg_at_10": ndcg_at_k(y, pred, 10),
        "median_acc": float(np.mean((y > np.median(y)) == (pred > np.median(pred)))) if len(y) else float("nan"),
        "pairwise_acc": pairwise_accuracy(y, pred),
    }
    if interval is not None:
        lo, hi = interval[:, 0], interval[:, 1]
        out["coverage_80"] = float(np.mean((y >= lo) & (y <= hi)))
    return out
