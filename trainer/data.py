"""Datasets for training: a post table (per post: created_at, platform, title, observation array in the
stream's layout) and the examples cut from it at observation ages with popscore.features.

The data come from the shared adapters (popscore.datasets: v1 Post objects and a snapshot table read in
place from ../shared/data). Hacker News: created_at = first front-page appearance (the data has no
creation time), counters likes = upvotes and comments; score weights from ScoreSettings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from popscore import features
from popscore.settings import COUNTER_NAMES, ScoreSettings

HN_DIR = "hackernews-frontpage-30min-2020-2022"


def shared_data_dir() -> Path:
    """../shared/data next to the checkout (where popscore.datasets reads it), or $POPSCORE_SHARED_DATA."""
    from popscore.datasets import DEFAULT_DATA_DIR

    env = os.environ.get("POPSCORE_SHARED_DATA")
    return Path(env) if env else DEFAULT_DATA_DIR


@dataclass
class PostTable:
    """Posts with their observation arrays (the stream worker's layout), sorted by created_at."""

    post_id: np.ndarray  # [P] str
    platform: list[str]
    created_at: np.ndarray  # [P] float64 epoch s
    posts: list  # contract Post objects (what the worker has at upload time)
    seqs: list[np.ndarray]  # P x [n_obs, 1+5] float64, NaN for counters the platform lacks
    source: str = ""

    def __len__(self) -> int:
        return len(self.created_at)

    @property
    def title(self) -> list[str]:
        return [p.text.title for p in self.posts]

    def take(self, idx: np.ndarray) -> "PostTable":
        idx = np.asarray(idx)
        return PostTable(
            self.post_id[idx], [self.platform[i] for i in idx], self.created_at[idx],
            [self.posts[i] for i in idx], [self.seqs[i] for i in idx], self.source,
        )  # fmt: skip


def table_from_events(events) -> PostTable:
    """popscore.datasets.DatasetEvents -> PostTable (one reader of ../shared/data: the adapters)."""
    snap = events.snapshot_table
    snap = snap.sort_values(["post_id", "observed_ns"], kind="stable")
    arr = np.full((len(snap), 1 + len(COUNTER_NAMES)), np.nan)
    arr[:, 0] = snap["observed_ns"].to_numpy(np.int64) / 1e9
    for j, c in enumerate(COUNTER_NAMES):
        if c in snap.columns:
            arr[:, 1 + j] = snap[c].to_numpy(dtype=np.float64, na_value=np.nan)
    ids = snap["post_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.zeros(0, int)
    bounds = dict(zip(ids[starts], zip(starts, np.r_[starts[1:], len(ids)])))
    posts = sorted(events.posts, key=lambda p: p.created_at)
    empty = np.zeros((0, 1 + len(COUNTER_NAMES)))
    seqs = [arr[slice(*bounds[p.post_id])] if p.post_id in bounds else empty for p in posts]
    return PostTable(
        post_id=np.array([p.post_id for p in posts]),
        platform=[p.platform for p in posts],
        created_at=np.array([p.created_at.timestamp() for p in posts], dtype=np.float64),
        posts=posts,
        seqs=seqs,
        source=events.name,
    )


def load_dataset(name: str = "hackernews", limit: int | None = None, data_dir: Path | None = None) -> PostTable:
    from popscore import datasets

    return table_from_events(datasets.load(name, data_dir or shared_data_dir(), limit=limit))


def load_hackernews(limit: int | None = None) -> PostTable:
    return load_dataset("hackernews", limit)


def label_complete(table: PostTable, horizon_s: float, list_gap_s: float) -> np.ndarray:
    """Per post: whether its target (the last observation within the horizon) is final. It is when the data
    cover the post's whole horizon, or when the post stopped being observed (left the front page, r/all's top
    100, the trending list) at least ``list_gap_s`` before the data's last observation. A post still listed
    when the data end has a target that is only a lower bound: the latest test windows hold many (on Reddit,
    whose data span 41 h, most posts of the last one), and an interval cannot be judged on them."""
    last = np.array([s[-1, 0] if len(s) else np.nan for s in table.seqs], dtype=np.float64)
    if not np.isfinite(last).any():
        return np.zeros(len(table), dtype=bool)
    data_end = np.nanmax(last)
    left = np.isfinite(last) & (last <= data_end - list_gap_s)
    return left | (table.created_at + horizon_s <= data_end)


def chronological_split(
    table: PostTable, test_frac: float = 0.2, embargo_s: float = 2 * 24 * 3600.0
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Train/test indices: the last ``test_frac`` of posts by first appearance are the test set; training
    posts first seen within ``embargo_s`` before the first test post are dropped (their labels overlap the
    test period). Returns (train_idx, test_idx, info)."""
    return rolling_origin_folds(table, 1, test_frac, embargo_s)[0]


def data_end(table: PostTable) -> float:
    """The data's last observation (epoch s); NaN without any."""
    last = [s[-1, 0] for s in table.seqs if len(s)]
    return float(max(last)) if last else float("nan")


def rolling_origin_folds(
    table: PostTable, n_folds: int = 3, test_frac: float = 0.3, embargo_s: float = 2 * 24 * 3600.0,
    label_wait_s: float | None = None,
) -> list[tuple[np.ndarray, np.ndarray, dict]]:
    """Rolling-origin evaluation: the last ``test_frac`` of posts (by first appearance) cut into ``n_folds``
    consecutive test windows; each fold trains on every post before its window except those first seen
    within ``embargo_s`` of it (their labels overlap the test period). One split says little on small data
    sets; several show how much a model's lead over a baseline moves with the period.

    ``label_wait_s``: posts created less than this before the data's last observation are in no window
    (``test_frac`` is then a share of the others): a post still listed when the data end has a lower bound
    for a label, and an interval cannot be judged on it (on Reddit every post created 12 h before the end has
    a final label)."""
    if n_folds < 1 or not 0 < test_frac < 1:
        raise ValueError("need n_folds >= 1 and 0 < test_frac < 1")
    order = np.argsort(table.created_at, kind="stable")
    if label_wait_s is not None:
        order = order[table.created_at[order] <= data_end(table) - label_wait_s]
    bounds = np.linspace(round((1 - test_frac) * len(order)), len(order), n_folds + 1).round().astype(int)
    folds = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        test = order[lo:hi]
        cut = table.created_at[test[0]] if len(test) else np.inf
        train = order[:lo]
        train = train[table.created_at[train] < cut - embargo_s]
        info = {
            "train_from": float(table.created_at[train].min()) if len(train) else None,
            "train_to": float(table.created_at[train].max()) if len(train) else None,
            "test_from": float(cut) if len(test) else None,
            "test_to": float(table.created_at[test].max()) if len(test) else None,
            "embargo_s": embargo_s,
            "label_wait_s": label_wait_s,
            "n_train_posts": int(len(train)),
            "n_test_posts": int(len(test)),
        }
        folds.append((train, test, info))
    return folds


@dataclass
class TitleEncodings:
    """Per post: the served text encoder's pooled title embedding (for the tree baseline) and its token
    states with their mask (what MTAF's word attention reads), kept once per post, not per example."""

    pooled: np.ndarray  # [P, TEXT_DIM] float32
    tokens: np.ndarray  # [P, L, TEXT_DIM] float16 (L = the longest title's token count)
    mask: np.ndarray  # [P, L] bool

    def take(self, idx: np.ndarray) -> "TitleEncodings":
        return TitleEncodings(self.pooled[idx], self.tokens[idx], self.mask[idx])


@dataclass
class Examples:
    """Model inputs cut at observation ages, one row per (post, age). Per-post title encodings are kept once
    in ``titles`` (indexed by ``post_index``) instead of being copied per age; :meth:`inputs_at` assembles
    the full ONNX input dict for any rows."""

    inputs: dict[str, np.ndarray]  # static_features, sequence, sequence_mask, dynamic_features: [E, ...]
    target: np.ndarray  # [E] log1p(score at horizon)
    age_h: np.ndarray  # [E]
    post_index: np.ndarray  # [E] index into the PostTable
    log_now: np.ndarray  # [E] log1p(score at as_of) (for baselines)
    created_at: np.ndarray  # [E]
    titles: TitleEncodings | None = None  # None: text absent
    visual: np.ndarray | None = None  # [P, VISUAL_DIM] per-post image embeddings (indexed by post_index); None: no picture

    def __len__(self) -> int:
        return len(self.target)

    def subset(self, mask: np.ndarray) -> "Examples":
        return Examples(
            {k: v[mask] for k, v in self.inputs.items()}, self.target[mask], self.age_h[mask],
            self.post_index[mask], self.log_now[mask], self.created_at[mask], self.titles, self.visual,
        )  # fmt: skip

    def inputs_at(self, rows: np.ndarray | slice | None = None, temporal: bool = True,
                  tokens: bool = True) -> dict[str, np.ndarray]:
        """The model inputs of ``rows`` (token tensors cut to their longest title), plus ``text_embedding``,
        the pooled title embedding only the tree baseline reads. ``tokens=False`` leaves the token tensors
        out (the trees over every example would otherwise hold gigabytes of them)."""
        rows = slice(None) if rows is None else rows
        out = {k: v[rows] for k, v in self.inputs.items()}
        b = len(out["static_features"])
        post = self.post_index[rows]
        out["text_embedding"] = (self.titles.pooled[post] if self.titles is not None
                                 else np.zeros((b, features.TEXT_DIM), np.float32))
        if tokens:
            titles = (self.titles.tokens[post], self.titles.mask[post]) if self.titles is not None else (None, None)
            visual = self.visual[post] if self.visual is not None else None
            out.update(features.embedding_inputs(b, *titles, visual_embedding=visual))
        if not temporal:
            for k in ("sequence", "sequence_mask", "dynamic_features"):
                out.pop(k, None)
        return out


def make_examples(
    spec: features.FeatureSpec,
    table: PostTable,
    ages_h: Sequence[float],
    titles: TitleEncodings | None = None,
    score: ScoreSettings | None = None,
) -> Examples:
    """Cut every post at every age with the serving feature code (the pieces of build_temporal_inputs)."""
    score = score or ScoreSettings()
    w = features.weight_matrix(table.platform, score.weights_for, spec.counters)
    target = features.target_log_score(spec, table.seqs, table.created_at, w)
    ok = np.isfinite(target)
    static = features.build_static_features(spec, table.created_at, table.platform, table.posts)
    parts = []
    for age in ages_h:
        seq = features.build_sequence(spec, table.seqs, table.created_at, table.created_at + age * 3600.0, w)
        seq.pop("score_now")
        seq["static_features"] = static
        parts.append(seq)
    n = len(table)
    sel = np.tile(ok, len(ages_h))
    inputs = {k: np.concatenate([p[k] for p in parts])[sel] for k in parts[0]}
    age_arr = np.repeat(np.asarray(ages_h, dtype=np.float64), n)[sel]
    post_index = np.tile(np.arange(n), len(ages_h))[sel]
    log_now = inputs["dynamic_features"][:, features.DYNAMIC_FEATURE_NAMES.index("log1p_score_now")].astype(np.float64)
    return Examples(inputs, np.tile(target, len(ages_h))[sel], age_arr, post_index, log_now,
                    np.tile(table.created_at, len(ages_h))[sel], titles)
