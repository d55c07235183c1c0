"""The memes recipe (``popscore train --dataset reddit-memes``): static popularity models on real pictures.

The data (``popscore.datasets.memes``) are 2,025 Reddit meme posts with their images, titles, authors, creation
times and final upvotes; the target is ``log1p(ups)``. There is one count per post, so only the static models
(at upload) are trained:

    load -> encode titles (served MiniLM) and images (EfficientNet-Lite0, cached) -> per chronological split:
        trivial mean, ridge probes on the encoders' embeddings, LightGBM on every feature, small LightGBMs on
        the upload-time features + the author's settled history (+ the probes' scores), MTAF-static with
        title / image / both (and a more regularised image+title variant, an average with the ridge probe,
        and the title and image MTAFs weighted on validation), the pairwise intrinsic-popularity ranker on the
        image; issue 20's picture signals (trainer/picture_cues.py low-level cues, trainer/caption_ocr.py
        caption OCR when tesseract is installed) as ridge probes, inside small trees beside the title's probe,
        stacked with the title MTAF on validation, and the caption appended to the title for MTAF; with --views
        the picture seen whole, in three bands and at mid-level (trainer/picture_views.py) in the same families
        -> metrics on the split's test window -> per model, mean and standard error over the folds, the
        paired difference from title-only and the promotion rule's verdict against it
    -> the reference split's best image+title MTAF (by validation MAE) -> popscore_reddit_image_static
    -> occlusion heat maps of a few test images through the exported encoder + head

Splits: the *reference* split is the issue's (the chronologically last 20 % of the posts as test); the
rolling-origin folds (``folds`` windows over the last ``fold_test_frac``) show how much the ranking of models
moves with the period. Every split drops the training posts created within ``embargo_days`` before its test
window (a post's upvotes keep coming for days; the posts next to the test window share its moment) and keeps
the last ``val_frac`` of the rest as the validation window (early stopping, ridge alpha, model choice, interval
calibration, the promotion gate). The test windows are only reported.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from popscore import features
from popscore.metrics import spearman
from popscore.trainer.runtime import default_threads, log

DATASET = "reddit-memes"
PLATFORM = "reddit"
MODEL_NAME = "popscore_reddit_image_static"
HORIZON = "final"  # the source's upvotes were collected months to years after the posts: their final count
TWO_X = float(np.log(2.0))


@dataclass
class MemesConfig:
    data_dir: Path | None = None  # None: ../shared/data (or $POPSCORE_SHARED_DATA)
    limit: int | None = None  # the earliest N posts (tests)
    seed: int = 0
    reference_test_frac: float = 0.2  # the issue's reference protocol: the last 20 % of the posts are the test
    folds: int = 6  # rolling-origin folds besides the reference split (0: the reference split only)
    fold_test_frac: float = 0.6  # the folds' test windows together: the latest 60 % (~200 posts each)
    embargo_days: float = 7.0
    val_frac: float = 0.15
    epochs: int | None = None  # None: at least min_steps optimiser steps, early stopping on validation MAE
    min_steps: int = 1500
    patience: int = 25
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-3
    d_model: int = 64
    ridge_alphas: tuple[float, ...] = (1.0, 10.0, 100.0, 1000.0, 10000.0)
    pair_window_days: float = 30.0  # ranker training pairs: created within this many days of each other
    pair_components: int = 64  # the ranker reads the image embedding's first principal components
    pair_cs: tuple[float, ...] = (1e-4, 1e-3, 1e-2)  # its inverse L2 strengths, one chosen on validation pairs
    pair_max_pairs: int = 60_000  # training pairs drawn at random when there are more
    author_gap_days: float = 7.0  # an author's earlier posts count for their popularity once this old
    probe_blocks: int = 5  # time-ordered blocks of the cross-fitted probe scores the trees read
    image_pca: tuple[int, ...] = (8, 32)  # ridge probes on the image embedding's first principal components
    picture_cues: bool = True  # low-level cues of the decoded picture (trainer/picture_cues.py) and their models
    ocr: bool = False  # caption OCR (trainer/caption_ocr.py, the tesseract command) and its models: a study, opt-in
    views: bool = False  # whole-picture views, tiles and mid-level features (trainer/picture_views.py): a study, opt-in
    views_mid_pca: int = 64  # the mid-level statistics' principal components (fit on the training window) the probe reads
    heatmaps: int = 4  # test images explained by occlusion (0: none)
    occlusion_patch: int = 48  # px of the 224 crop
    occlusion_stride: int = 16
    threads: int | None = None
    report_dir: Path = Path("reports")
    model_repo: Path | None = Path("model_repo")  # None: no export
    heatmap_dir: Path | None = Path("docs/training")  # the committed maps (sensitivity only, no picture)
    force: bool = False
    progress: bool = False


# ------------------------------------------------------------------------------------------------ data


@dataclass
class MemesTable:
    """Per post, in creation order: what a scorer has at upload, the encoders' outputs, and the label."""

    frame: object  # pandas DataFrame of popscore.datasets.memes
    posts: list
    created_at: np.ndarray
    target: np.ndarray  # log1p(ups)
    static: np.ndarray  # [P, static_dim] popscore.features.build_static_features
    titles: object  # popscore.trainer.data.TitleEncodings
    images: np.ndarray  # [P, 1280] EfficientNet-Lite0
    image_encoder: str  # its version (weights hash + preprocessing)
    author_past: np.ndarray  # [P, 2] mean log1p(ups) (NaN: none) and count of the author's posts >= the gap older
    cues: np.ndarray | None = None  # [P, len(CUE_NAMES)] low-level picture cues; None: not computed
    ocr: object | None = None  # TitleEncodings of the caption text read off each picture; None: no OCR
    ocr_words: np.ndarray | None = None  # [P] caption words OCR kept (0: none found)
    titles_with_ocr: object | None = None  # TitleEncodings of "<title> | <caption text>" (the title alone when none)
    ocr_seconds: np.ndarray | None = None  # [P] wall seconds of each picture's OCR when it ran (from the cache)
    views: dict | None = None  # picture_views.view_blocks: whole / tiles / mid / views_mean [P, d]; None: not computed
    views_check: dict | None = None  # the views' centre crop against the cached embedding (same encoder, same crop)

    def __len__(self) -> int:
        return len(self.target)


def load_table(cfg: MemesConfig) -> MemesTable:
    from popscore.datasets import memes
    from popscore.trainer.data import shared_data_dir
    from popscore.trainer.encoders import cached_title_encodings
    from popscore.trainer.image_encoder import embed_files, encoder_version

    data = memes.load(cfg.data_dir or shared_data_dir(), limit=cfg.limit)
    if data.problems:
        log(f"skipped source rows: {data.problems}")
    created = data.frame["created_at"].to_numpy(np.float64)
    spec = features.DEFAULT_SPEC
    log(f"{len(data)} posts; title encodings (served MiniLM, cached) and image embeddings (EfficientNet-Lite0, cached)")
    titles = cached_title_encodings(data.frame["title"].tolist(), progress=cfg.progress)
    images = embed_files(data.image_paths)
    target = np.log1p(data.frame["ups"].to_numpy(np.float64))
    table = MemesTable(
        frame=data.frame, posts=data.posts, created_at=created, target=target,
        static=features.build_static_features(spec, created, [PLATFORM] * len(data), data.posts),
        titles=titles, images=images, image_encoder=encoder_version(),
        author_past=author_past_popularity(data.frame["author"].to_numpy(), created, target,
                                           cfg.author_gap_days * 86400.0),
    )  # fmt: skip
    if cfg.picture_cues:
        from popscore.trainer.picture_cues import cues_of_files

        log("low-level picture cues (cached)")
        table.cues = cues_of_files(data.image_paths)
    if use_ocr(cfg):
        add_ocr(table, data.image_paths, cfg.progress)
    if cfg.views:
        add_views(table, data.image_paths)
    return table


def add_views(table: MemesTable, image_paths: list) -> None:
    """The frozen encoder on the whole picture (letterboxed), its three horizontal bands and its mid-level
    stages (trainer/picture_views.py, cached per picture). Their centre-crop view must reproduce the cached
    embedding, or the views were not computed by the same encoder and preprocessing."""
    from popscore.trainer.picture_views import VIEWS, view_blocks, view_features_of_files

    log("whole-picture views, bands and mid-level features (EfficientNet-Lite0, cached per picture)")
    t0 = time.time()
    feats = view_features_of_files(image_paths)
    crop = feats[:, VIEWS.index("crop"), :table.images.shape[1]]
    diff = float(np.abs(crop - table.images).max())
    if not diff <= 1e-3:
        raise RuntimeError(f"the views' centre crop differs from the cached image embedding by {diff}")
    table.views = view_blocks(feats)
    table.views_check = {"crop_max_abs_diff": diff, "seconds": time.time() - t0}


def use_ocr(cfg: MemesConfig) -> bool:
    from popscore.trainer.caption_ocr import tesseract_available

    if cfg.ocr and not tesseract_available():
        raise RuntimeError("--ocr needs the tesseract command (Debian: apt-get install tesseract-ocr)")
    return cfg.ocr


def add_ocr(table: MemesTable, image_paths: list, progress: bool = False) -> None:
    """The caption text of each picture (Tesseract, cached per picture), encoded by the served MiniLM alone and
    appended to the title (what MTAF's word attention can read; the encoder keeps the first 32 tokens)."""
    from popscore.trainer.caption_ocr import cached_ocr, caption_texts
    from popscore.trainer.encoders import cached_title_encodings

    log("caption OCR (tesseract, cached per picture)")
    records = cached_ocr(image_paths, progress=progress)
    captions = caption_texts(records)
    table.ocr_words = np.array([len(c.split()) for c in captions], np.float64)
    table.ocr_seconds = np.array([r["seconds"] for r in records])
    table.ocr = cached_title_encodings(captions, progress=progress)
    titles = table.frame["title"].tolist()
    table.titles_with_ocr = cached_title_encodings([f"{t} | {c}" if c else t for t, c in zip(titles, captions)],
                                                   progress=progress)
    log(f"OCR found caption words in {np.mean(table.ocr_words > 0):.1%} of the pictures")


def author_past_popularity(authors: np.ndarray, created_at: np.ndarray, target: np.ndarray, gap_s: float) -> np.ndarray:
    """[P, 2]: the mean log1p(ups) of the author's posts created at least ``gap_s`` before this one (NaN when
    none) and their count. The gap keeps it to counts that had settled by the post's upload (most upvotes
    come within days); a deleted author has no history. Not a served feature: the worker keeps no author's
    past final counts, so the models that read it are reported, never exported."""
    from popscore.datasets.memes import DELETED_AUTHORS

    out = np.zeros((len(authors), 2))
    out[:, 0] = np.nan
    for a in np.unique(authors):
        if a in DELETED_AUTHORS:
            continue
        idx = np.flatnonzero(authors == a)
        for i in idx:
            prev = idx[created_at[idx] <= created_at[i] - gap_s]
            if len(prev):
                out[i] = target[prev].mean(), len(prev)
    return out


@dataclass
class Split:
    name: str
    fit: np.ndarray  # training posts (early-stopped models fit on these)
    val: np.ndarray  # the training window's last posts
    test: np.ndarray
    window: dict


def splits(cfg: MemesConfig, table: MemesTable) -> list[Split]:
    """The reference split first (the exported model's), then the rolling-origin folds."""
    from popscore.trainer.data import rolling_origin_folds

    dated = SimpleNamespace(created_at=table.created_at)
    embargo_s = cfg.embargo_days * 86400.0
    raw = [("reference", *rolling_origin_folds(dated, 1, cfg.reference_test_frac, embargo_s)[0])]
    if cfg.folds:
        raw += [(f"fold{k + 1}", *f) for k, f in enumerate(rolling_origin_folds(dated, cfg.folds, cfg.fold_test_frac,
                                                                                  embargo_s))]
    out = []
    for name, train, test, window in raw:
        n_val = max(1, int(round(cfg.val_frac * len(train))))
        out.append(Split(name, train[:-n_val], train[-n_val:], test, {**window, "n_val_posts": n_val}))
    return out


def examples(table: MemesTable, idx: np.ndarray, text: bool | str, visual: bool | str):
    """The posts ``idx`` as trainer Examples at upload, with the title and/or the image present. ``text``
    ``"title+ocr"``: the title with the picture's caption text appended, in the title's place. ``visual`` a
    name of ``table.views`` with 1280 columns (``whole``, ``views_mean``): that view in the centre crop's place."""
    from popscore.trainer.data import Examples

    n = len(idx)
    titles = table.titles_with_ocr if text == "title+ocr" else table.titles
    images = table.views[visual].astype(np.float32) if isinstance(visual, str) else table.images
    return Examples({"static_features": table.static[idx]}, table.target[idx], np.zeros(n), np.arange(n),
                    np.zeros(n), table.created_at[idx], titles.take(idx) if text else None,
                    images[idx] if visual else None)


# ------------------------------------------------------------------------------------------------ metrics


def two_x_pairs(ups_log1p: np.ndarray) -> np.ndarray:
    """[n, 2] index pairs (more popular, less popular) whose upvotes differ by at least 2x."""
    ups = np.round(np.expm1(ups_log1p))  # upvotes are counts: exact at the 2x boundary
    i, j = np.triu_indices(len(ups), 1)
    hi_first = ups[i] >= 2 * ups[j]
    lo_first = ups[j] >= 2 * ups[i]
    return np.concatenate([np.stack([i[hi_first], j[hi_first]], 1), np.stack([j[lo_first], i[lo_first]], 1)])


def pair_accuracy(pred: np.ndarray, pairs: np.ndarray) -> float:
    """Share of pairs ordered right; a tie counts half."""
    if not len(pairs):
        return float("nan")
    d = pred[pairs[:, 0]] - pred[pairs[:, 1]]
    return float(np.mean((d > 0) + 0.5 * (d == 0)))


def split_accuracy(y: np.ndarray, pred: np.ndarray, threshold: float) -> float:
    """Popular/unpopular at ``threshold`` (on the log1p scale): both sides of the same line."""
    return float(np.mean((y > threshold) == (pred > threshold)))


def test_metrics(y: np.ndarray, pred: np.ndarray, train_median: float, pairs: np.ndarray) -> dict:
    """The report's figures for one model on one test window. ``acc_test_median`` cuts the truth and the
    prediction at the test window's median (as the issue asks; that median is known only afterwards);
    ``acc_test_median_rank`` calls a post popular when the model ranks it in the window's upper half, which
    needs no median at all and is blind to a level shift between periods."""
    test_median = float(np.median(y))
    return {
        "n": int(len(y)), "mae": float(np.mean(np.abs(pred - y))), "srcc": spearman(y, pred),
        "acc_train_median": split_accuracy(y, pred, train_median),
        "acc_test_median": split_accuracy(y, pred, test_median),
        "acc_test_median_rank": float(np.mean((y > test_median) == (pred > np.median(pred)))),
        "pairwise_2x": pair_accuracy(pred, pairs), "n_pairs_2x": int(len(pairs)),
    }  # fmt: skip


# ------------------------------------------------------------------------------------------------ models


def ridge_probe(cfg: MemesConfig, x_fit: np.ndarray, y_fit: np.ndarray, x_val: np.ndarray, y_val: np.ndarray):
    """Ridge on standardised embeddings; alpha chosen by validation MAE, then refit on fit + validation."""
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def fit(alpha, x, y):
        return make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(x, y)

    maes = {a: float(np.mean(np.abs(fit(a, x_fit, y_fit).predict(x_val) - y_val))) for a in cfg.ridge_alphas}
    alpha = min(maes, key=maes.get)
    return fit(alpha, np.concatenate([x_fit, x_val]), np.concatenate([y_fit, y_val])), alpha


def probe_scores(cfg: MemesConfig, x_fit, y_fit, x_val, y_val, x_test, alpha: float) -> tuple[np.ndarray, ...]:
    """A ridge probe's prediction as one feature for the trees, on the same footing in every window: on the
    training posts cross-fitted (``probe_blocks`` time-ordered blocks, each scored by a probe fit on the
    others), on validation and test by the probe fit on the training posts. One number per encoder instead
    of 384 or 1,280 dimensions: the lowest-dimensional projection of the embedding that carries its signal."""
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def fit(rows):
        return make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(x_fit[rows], y_fit[rows])

    on_fit = np.zeros(len(y_fit))
    for block in np.array_split(np.arange(len(y_fit)), cfg.probe_blocks):
        on_fit[block] = fit(np.setdiff1d(np.arange(len(y_fit)), block)).predict(x_fit[block])
    whole = fit(np.arange(len(y_fit)))
    return on_fit, whole.predict(x_val), whole.predict(x_test)


def lightgbm(cfg: MemesConfig, x_fit, y_fit, x_val, y_val):
    """LightGBM (L1) on every feature: static + title embedding + image embedding; early stopping on validation."""
    import lightgbm as lgb

    model = lgb.LGBMRegressor(objective="l1", n_estimators=1000, learning_rate=0.04, num_leaves=15,
                              min_child_samples=20, colsample_bytree=0.2, subsample=0.8, subsample_freq=1,
                              reg_lambda=1.0, random_state=cfg.seed, n_jobs=cfg.threads, verbose=-1)
    model.fit(x_fit, y_fit, eval_set=[(x_val, y_val)], eval_metric="l1",
              callbacks=[lgb.early_stopping(50, verbose=False)])
    return model


def lightgbm_small(cfg: MemesConfig, x_fit, y_fit, x_val, y_val):
    """LightGBM (L1) on a handful of features (upload time, the author's history, probe scores): small trees,
    early stopping on validation."""
    import lightgbm as lgb

    model = lgb.LGBMRegressor(objective="l1", n_estimators=1000, learning_rate=0.03, num_leaves=7,
                              min_child_samples=30, subsample=0.8, subsample_freq=1, reg_lambda=1.0,
                              random_state=cfg.seed, n_jobs=cfg.threads, verbose=-1)
    model.fit(x_fit, y_fit, eval_set=[(x_val, y_val)], eval_metric="l1",
              callbacks=[lgb.early_stopping(50, verbose=False)])
    return model


# name: which probe scores the author-history trees read beside the upload-time features and the author's history
AUTHOR_TREES = {"lightgbm_author": (), "lightgbm_author_title": ("title",), "lightgbm_author_image": ("image",),
                "lightgbm_author_image_title": ("title", "image")}


def stacked(val_preds: list[np.ndarray], y_val: np.ndarray, test_preds: list[np.ndarray]) -> tuple[np.ndarray, list]:
    """Least-squares weights (with an intercept) of several models' predictions, fit on the validation window."""
    a = np.column_stack([np.ones(len(y_val)), *val_preds])
    coef = np.linalg.lstsq(a, y_val, rcond=None)[0]
    return np.column_stack([np.ones(len(test_preds[0])), *test_preds]) @ coef, [float(c) for c in coef]


MTAF_VARIANTS = {
    # name: (title, image, overrides of the training config)
    "mtaf_content": (False, False, {}),  # upload-time features alone: what the title and the picture add to them
    "mtaf_title": (True, False, {}),
    "mtaf_image": (False, True, {}),
    "mtaf_image_title": (True, True, {}),
    # a smaller, more regularised head: 2k posts and 1,664 input dims overfit within a few epochs
    "mtaf_image_title_small": (True, True, {"d_model": 32, "weight_decay": 0.05, "lr": 5e-4}),
}
IMAGE_TITLE_MODELS = ("mtaf_image_title", "mtaf_image_title_small", "mtaf_late_fusion")


# name: (the author's settled history?, probe scores read, raw picture-signal blocks read); beside the upload-time
# features. The issue-20 study of what the picture adds to the title: low-level cues and the caption OCR.
SIGNAL_TREES = {
    "lightgbm_title": (False, ("title",), ()),
    "lightgbm_title_image": (False, ("title", "image"), ()),
    "lightgbm_title_cues": (False, ("title",), ("cues",)),
    "lightgbm_title_image_cues": (False, ("title", "image"), ("cues",)),
    "lightgbm_title_ocr": (False, ("title", "ocr"), ("ocr_words",)),
    "lightgbm_title_ocr_image": (False, ("title", "ocr", "image"), ("ocr_words",)),
    "lightgbm_author_title_cues": (True, ("title",), ("cues",)),
    "lightgbm_author_title_ocr": (True, ("title", "ocr"), ("ocr_words",)),
    "lightgbm_author_title_ocr_image_cues": (True, ("title", "ocr", "image"), ("cues", "ocr_words")),
    # --views: the picture seen whole, in bands and at mid-level (trainer/picture_views.py), as probe scores
    "lightgbm_title_image_whole": (False, ("title", "image_whole"), ()),
    "lightgbm_title_image_tiles": (False, ("title", "image_tiles"), ()),
    "lightgbm_title_image_mid": (False, ("title", "image_mid"), ()),
    "lightgbm_title_image_views": (False, ("title", "image_whole", "image_tiles", "image_mid"), ()),
    "lightgbm_author_title_image_views": (True, ("title", "image_whole", "image_tiles", "image_mid"), ()),
}
# name: the predictions weighted by least squares on the validation window (mtaf_*: the MTAF's; probe_*: the
# ridge probe's, fit on the training posts)
STACKS = {
    "stack_title_image": ("mtaf_title", "mtaf_image"),
    "stack_title_cues": ("mtaf_title", "probe_cues"),
    "stack_title_image_cues": ("mtaf_title", "mtaf_image", "probe_cues"),
    "stack_title_ocr": ("mtaf_title", "probe_ocr"),
    "stack_title_ocr_image": ("mtaf_title", "probe_ocr", "mtaf_image"),
    "stack_title+ocr_image": ("mtaf_title_ocr", "mtaf_image"),
    "stack_title_image_whole": ("mtaf_title", "mtaf_image_whole"),
    "stack_title_image_views": ("mtaf_title", "mtaf_image_views"),
    "stack_title_probe_views": ("mtaf_title", "probe_image_whole", "probe_image_tiles", "probe_image_mid"),
}
# --views: MTAF with a whole-picture 1280-d vector in the centre crop's place (name: the table.views block)
VIEW_MTAF = {"mtaf_image_whole": "whole", "mtaf_image_views": "views_mean"}


def picture_signal_probes(cfg: MemesConfig, table: MemesTable, split: Split, preds: dict, probes: dict,
                          extra: dict) -> dict[str, np.ndarray]:
    """Ridge probes on the low-level cues and on the caption OCR (its MiniLM embedding and whether any word
    was found): their test predictions (``ridge_cues``, ``ridge_ocr``) and, in ``probes``, their scores for the
    trees and stacks. Returns the raw per-post blocks the trees may read (``cues``, ``ocr_words``)."""
    y = table.target
    blocks: dict[str, np.ndarray] = {}
    signals = {}
    if table.cues is not None:
        blocks["cues"] = table.cues
        signals["cues"] = table.cues
    if table.ocr is not None:
        blocks["ocr_words"] = table.ocr_words[:, None]
        signals["ocr"] = np.column_stack([table.ocr.pooled.astype(np.float64), table.ocr_words > 0])
    for name, x in signals.items():
        model, alpha = ridge_probe(cfg, x[split.fit], y[split.fit], x[split.val], y[split.val])
        preds[f"ridge_{name}"] = model.predict(x[split.test])
        extra[f"ridge_{name}_alpha"] = alpha
        probes[name] = probe_scores(cfg, x[split.fit], y[split.fit], x[split.val], y[split.val], x[split.test], alpha)
    return blocks


def view_probes(cfg: MemesConfig, table: MemesTable, split: Split, preds: dict, probes: dict, extra: dict) -> None:
    """Ridge probes on the picture's views (``ridge_image_{whole,tiles,mid,views}``: the letterboxed whole, the
    bands' mean and max, the whole picture's mid-level statistics reduced to ``views_mid_pca`` principal
    components fit on the training window, the mean of the whole and the bands) and their scores for the trees
    and stacks (``probes["image_<name>"]``)."""
    from sklearn.decomposition import PCA

    y = table.target
    train = np.concatenate([split.fit, split.val])
    for name, key in (("whole", "whole"), ("tiles", "tiles"), ("mid", "mid"), ("views", "views_mean")):
        x = table.views[key]
        if name == "mid":
            k = min(cfg.views_mid_pca, len(train) - 1, x.shape[1])
            x = PCA(k, random_state=cfg.seed).fit(x[train]).transform(x)
        model, alpha = ridge_probe(cfg, x[split.fit], y[split.fit], x[split.val], y[split.val])
        preds[f"ridge_image_{name}"] = model.predict(x[split.test])
        extra[f"ridge_image_{name}_alpha"] = alpha
        probes[f"image_{name}"] = probe_scores(cfg, x[split.fit], y[split.fit], x[split.val], y[split.val],
                                               x[split.test], alpha)


def late_fusion(title_model, image_model):
    """Image + title as one served graph: the mean of a title model and an image model, each trained alone
    (with the content features). Trained jointly on 1,664 embedding dimensions, the image+title MTAF overfits
    ~1,300 posts before either modality's signal is learnt (see docs/training.md, "Memes")."""
    import torch

    from popscore.trainer.models import MTAFStatic

    class LateFusionStatic(MTAFStatic):
        def __init__(self, title, image):
            torch.nn.Module.__init__(self)
            self.cfg, self.title, self.image = title.cfg, title, image
            self.register_buffer("interval_margin", torch.zeros(1))  # set by calibrate_interval
            self.register_buffer("only_title", torch.tensor([[1.0, 1.0, 0.0, 1.0]]))
            self.register_buffer("only_image", torch.tensor([[1.0, 0.0, 1.0, 1.0]]))

        def forward(self, static_features, text_tokens, text_token_mask, visual_embedding, audio_embedding,
                    modality_mask):
            args = (static_features, text_tokens, text_token_mask, visual_embedding, audio_embedding)
            t = self.title(*args, modality_mask * self.only_title)
            i = self.image(*args, modality_mask * self.only_image)
            point = 0.5 * (t["log_score"] + i["log_score"])
            band = 0.5 * (t["log_interval"] + i["log_interval"])
            lo = torch.minimum(band[:, :1] - self.interval_margin, point)
            hi = torch.maximum(band[:, 1:] + self.interval_margin, point)
            return {"log_score": point, "log_interval": torch.cat([lo, hi], 1),
                    "modality_weights": 0.5 * (t["modality_weights"] + i["modality_weights"]),
                    "word_attention": t["word_attention"]}

    return LateFusionStatic(title_model, image_model).eval()


def train_config(cfg: MemesConfig, **overrides):
    """The shared trainer's configuration for ``fitting.train_mtaf`` (what it reads of it)."""
    from popscore.trainer.train import TrainConfig

    base = TrainConfig(dataset=DATASET, seed=cfg.seed, epochs=cfg.epochs, min_steps=cfg.min_steps,
                       patience=cfg.patience, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
                       d_model=cfg.d_model, threads=cfg.threads, progress=cfg.progress, spec=features.DEFAULT_SPEC)
    return replace(base, **overrides)


def train_mtaf_variant(cfg: MemesConfig, table: MemesTable, split: Split, text: bool | str, visual: bool,
                       overrides: dict):
    from popscore.trainer.fitting import predict_mtaf, train_mtaf

    tcfg = train_config(cfg, **overrides)
    fit, val = examples(table, split.fit, text, visual), examples(table, split.val, text, visual)
    model, history = train_mtaf(tcfg, features.DEFAULT_SPEC, fit, val, temporal=False)
    val_mae = float(np.mean(np.abs(predict_mtaf(model, val, False)["log_score"] - val.target)))
    return model, history, val_mae, fit, val


class PairRanker:
    """Siamese intrinsic-popularity scorer on the image embedding (Ding et al.'s protocol): one linear score per
    picture on the embedding's first ``pair_components`` principal components, trained with the logistic loss
    on the score difference of training pairs with a clear (>= 2x) gap posted within ``pair_window_days`` of
    each other (so the pair shares the subreddit's audience of that moment and the gap is more the picture's
    than the period's), L2 strength chosen by pair accuracy on the validation window. A linear score with a
    strong penalty: the earlier MLP ranker learnt its 154k training pairs (99 %) and ranked test pairs at chance."""

    def __init__(self, cfg: MemesConfig):
        self.cfg = cfg
        self.pca = self.scaler = self.weights = None
        self.slope, self.intercept = 0.0, 0.0

    def pairs(self, created_at: np.ndarray, y: np.ndarray) -> np.ndarray:
        p = two_x_pairs(y)
        close = np.abs(created_at[p[:, 0]] - created_at[p[:, 1]]) <= self.cfg.pair_window_days * 86400.0
        return p[close]

    def _train(self, z: np.ndarray, pairs: np.ndarray, c: float) -> np.ndarray:
        from sklearn.linear_model import LogisticRegression

        if not len(pairs):
            return np.zeros(z.shape[1])  # nothing to learn from: every picture scores the same
        if len(pairs) > self.cfg.pair_max_pairs:
            pairs = pairs[np.random.default_rng(self.cfg.seed).choice(len(pairs), self.cfg.pair_max_pairs, replace=False)]
        d = z[pairs[:, 0]] - z[pairs[:, 1]]  # winner first; both orders so the classes balance
        x, label = np.concatenate([d, -d]), np.concatenate([np.ones(len(d)), np.zeros(len(d))])
        return LogisticRegression(C=c, fit_intercept=False, max_iter=500).fit(x, label).coef_[0]

    def fit(self, x_fit, created_fit, y_fit, x_val, created_val, y_val) -> dict:
        """C on the validation pairs, then the ranker refit on the pairs of fit + validation."""
        from sklearn.decomposition import PCA
        from sklearn.preprocessing import StandardScaler

        x, created, y = (np.concatenate(a) for a in ((x_fit, x_val), (created_fit, created_val), (y_fit, y_val)))
        self.pca = PCA(min(self.cfg.pair_components, len(x) - 1), random_state=self.cfg.seed).fit(x)
        self.scaler = StandardScaler().fit(self.pca.transform(x))
        z_fit, z_val = self.project(x_fit), self.project(x_val)
        fit_pairs, val_pairs = self.pairs(created_fit, y_fit), two_x_pairs(y_val)
        val_acc = {c: pair_accuracy(z_val @ self._train(z_fit, fit_pairs, c), val_pairs) for c in self.cfg.pair_cs}
        c = max(val_acc, key=val_acc.get)
        pairs = self.pairs(created, y)
        z = self.project(x)
        self.weights = self._train(z, pairs, c)
        scores = z @ self.weights
        # a least-squares line maps the score to the log1p scale (MAE and the median splits need one)
        self.slope, self.intercept = np.polyfit(scores, y, 1) if np.ptp(scores) > 0 else (0.0, float(y.mean()))
        return {"n_pairs": int(len(pairs)), "window_days": self.cfg.pair_window_days, "C": c,
                "val_pair_acc": {str(k): round(v, 4) for k, v in val_acc.items()},
                "train_pair_acc": pair_accuracy(scores, pairs)}

    def project(self, x: np.ndarray) -> np.ndarray:
        return self.scaler.transform(self.pca.transform(x))

    def score(self, x: np.ndarray) -> np.ndarray:
        return self.project(x) @ self.weights

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.intercept + self.slope * self.score(x)


@dataclass
class SplitResult:
    split: Split
    metrics: dict[str, dict]  # model -> test_metrics
    preds: dict[str, np.ndarray]
    val_mae: dict[str, float]
    extra: dict = field(default_factory=dict)
    models: dict = field(default_factory=dict)  # the MTAF image+title models (for the export) and their examples


def run_split(cfg: MemesConfig, table: MemesTable, split: Split, keep_models: bool) -> SplitResult:
    log(f"{split.name}: fit {len(split.fit)} / val {len(split.val)} / test {len(split.test)} posts")
    y = table.target
    y_fit, y_val, y_test = y[split.fit], y[split.val], y[split.test]
    train_median = float(np.median(np.concatenate([y_fit, y_val])))
    preds: dict[str, np.ndarray] = {"mean": np.full(len(split.test), np.concatenate([y_fit, y_val]).mean())}
    val_mae: dict[str, float] = {}
    extra: dict = {}
    emb = {"title": table.titles.pooled.astype(np.float64), "image": table.images.astype(np.float64)}
    emb["both"] = np.concatenate([emb["title"], emb["image"]], 1)
    probes = {}
    for name, x in emb.items():
        model, alpha = ridge_probe(cfg, x[split.fit], y_fit, x[split.val], y_val)
        preds[f"ridge_{name}"] = model.predict(x[split.test])
        extra[f"ridge_{name}_alpha"] = alpha
        if name != "both":
            probes[name] = probe_scores(cfg, x[split.fit], y_fit, x[split.val], y_val, x[split.test], alpha)
    from sklearn.decomposition import PCA

    train = np.concatenate([split.fit, split.val])
    for k in cfg.image_pca:  # fewer, stronger directions of the picture (fit on the training window only)
        z = PCA(k, random_state=cfg.seed).fit(emb["image"][train]).transform(emb["image"])
        model, _ = ridge_probe(cfg, z[split.fit], y_fit, z[split.val], y_val)
        preds[f"ridge_image_pca{k}"] = model.predict(z[split.test])
    # the upload-time features, the author's settled history and the probes' scores as single features
    author = [np.column_stack([table.static[rows], table.author_past[rows]]) for rows in (split.fit, split.val, split.test)]
    for name, reads in AUTHOR_TREES.items():
        x_fit, x_val, x_test = (np.column_stack([a, *[probes[r][k] for r in reads]]) for k, a in enumerate(author))
        tree = lightgbm_small(cfg, x_fit, y_fit, x_val, y_val)
        preds[name] = tree.predict(x_test)
        extra[f"{name}_trees"] = int(tree.best_iteration_ or tree.n_estimators)
    cue_blocks = picture_signal_probes(cfg, table, split, preds, probes, extra)
    if table.views is not None:
        view_probes(cfg, table, split, preds, probes, extra)
    for name, (with_author, reads, raw) in SIGNAL_TREES.items():
        if not all(r in probes for r in reads) or not all(b in cue_blocks for b in raw):
            continue  # a signal this run does not have (no OCR, no cues)
        base = author if with_author else [table.static[rows] for rows in (split.fit, split.val, split.test)]
        x_fit, x_val, x_test = (
            np.column_stack([a, *[probes[r][k] for r in reads], *[cue_blocks[b][rows] for b in raw]])
            for k, (a, rows) in enumerate(zip(base, (split.fit, split.val, split.test))))
        tree = lightgbm_small(cfg, x_fit, y_fit, x_val, y_val)
        preds[name] = tree.predict(x_test)
        extra[f"{name}_trees"] = int(tree.best_iteration_ or tree.n_estimators)
    x_all = np.concatenate([table.static, emb["both"]], 1)
    gbm = lightgbm(cfg, x_all[split.fit], y_fit, x_all[split.val], y_val)
    preds["lightgbm"] = gbm.predict(x_all[split.test])
    extra["lightgbm_trees"] = int(gbm.best_iteration_ or gbm.n_estimators)

    from popscore.trainer.fitting import predict_mtaf

    models = {}
    variants = dict(MTAF_VARIANTS)
    if table.titles_with_ocr is not None:
        variants["mtaf_title_ocr"] = ("title+ocr", False, {})  # the caption text appended to the title
    if table.views is not None:
        variants.update({name: (False, view, {}) for name, view in VIEW_MTAF.items()})
    for name, (text, visual, overrides) in variants.items():
        log(f"{split.name}: {name}")
        model, history, vmae, fit_ex, val_ex = train_mtaf_variant(cfg, table, split, text, visual, overrides)
        preds[name] = predict_mtaf(model, examples(table, split.test, text, visual), False)["log_score"]
        val_mae[name] = vmae
        extra[f"{name}_epochs"] = len(history)
        models[name] = {"model": model, "fit": examples(table, split.fit, True, True),
                        "val": examples(table, split.val, True, True), "history": history}
    # title and image MTAFs weighted by least squares on the validation window (the late fusion's fixed 1/2, 1/2
    # learnt instead); the validation window also stopped their training, so the weights are a little optimistic
    val_of = {n: predict_mtaf(models[n]["model"], examples(table, split.val, *variants[n][:2]), False)["log_score"]
              for n in ("mtaf_title", "mtaf_image", "mtaf_title_ocr", *VIEW_MTAF) if n in models}
    test_of = {n: preds[n] for n in val_of}
    for signal in ("cues", "ocr", "image_whole", "image_tiles", "image_mid"):  # the probes fit on the training
        # posts, as on the test window
        if signal in probes:
            val_of[f"probe_{signal}"], test_of[f"probe_{signal}"] = probes[signal][1], probes[signal][2]
    for name, parts in STACKS.items():
        if all(part in val_of for part in parts):
            preds[name], extra[f"{name}_weights"] = stacked([val_of[q] for q in parts], y_val,
                                                            [test_of[q] for q in parts])
    fused = late_fusion(models["mtaf_title"]["model"], models["mtaf_image"]["model"])
    models["mtaf_late_fusion"] = {**models["mtaf_image_title"], "model": fused, "history": []}
    preds["mtaf_late_fusion"] = predict_mtaf(fused, examples(table, split.test, True, True), False)["log_score"]
    val_mae["mtaf_late_fusion"] = float(np.mean(np.abs(
        predict_mtaf(fused, models["mtaf_late_fusion"]["val"], False)["log_score"] - y_val)))
    if "mtaf_image_whole" in models:  # the served late fusion's form with the whole picture in the crop's place
        fused_whole = late_fusion(models["mtaf_title"]["model"], models["mtaf_image_whole"]["model"])
        preds["mtaf_late_fusion_whole"] = predict_mtaf(fused_whole, examples(table, split.test, True, "whole"),
                                                       False)["log_score"]
    if not keep_models:
        models = {}
    # the image+title MTAF averaged with the ridge probe on both embeddings (chosen beforehand, not on the test)
    preds["mtaf_image_title+ridge_both"] = 0.5 * (preds["mtaf_image_title"] + preds["ridge_both"])

    ranker = PairRanker(cfg)
    extra["pair_ranker"] = ranker.fit(table.images[split.fit], table.created_at[split.fit], y_fit,
                                      table.images[split.val], table.created_at[split.val], y_val)
    preds["pair_ranker_image"] = ranker.predict(table.images[split.test])

    pairs = two_x_pairs(y_test)
    metrics = {name: test_metrics(y_test, p, train_median, pairs) for name, p in preds.items()}
    extra.update(train_median=train_median, test_median=float(np.median(y_test)))
    return SplitResult(split, metrics, preds, val_mae, extra, models)


# ------------------------------------------------------------------------------------------------ export


def served_recipe_model(model_repo: Path) -> str | None:
    """Which of the recipe's models the repository's latest ``popscore_reddit_image_static`` version is (None:
    no version). Versions before the field existed say it through their fusion (v1: the late fusion)."""
    versions = sorted((int(p.name) for p in (Path(model_repo) / MODEL_NAME).glob("[0-9]*") if p.name.isdigit()))
    if not versions:
        return None
    meta = json.loads((Path(model_repo) / MODEL_NAME / str(versions[-1]) / "metadata.json").read_text())
    if "recipe_model" in meta:
        return meta["recipe_model"]
    return "mtaf_late_fusion" if str(meta.get("fusion", "")).startswith("late") else "mtaf_image_title"


def beats_on_folds(results: list[SplitResult], candidate: str, incumbent: str, z: float = 2.0) -> dict:
    """The candidate's paired lead over the incumbent on the rolling-origin folds, in median-split (at the test
    median) and pairwise accuracy: it wins only if both leads exceed ``z`` standard errors."""
    folds = [r for r in results if r.split.name != "reference"]
    out = {"wins": len(folds) > 1}
    for k in ("acc_test_median", "pairwise_2x"):
        d = np.array([f.metrics[candidate][k] - f.metrics[incumbent][k] for f in folds])
        se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
        out[k] = [float(d.mean()) if len(d) else float("nan"), se]
        out["wins"] = out["wins"] and bool(d.mean() > z * se)
    return out


def export_image_static(cfg: MemesConfig, table: MemesTable, ref: SplitResult) -> dict:
    """The reference split's image+title MTAF with the lower validation MAE -> calibrated interval ->
    candidate -> promotion gate -> ``<model_repo>/popscore_reddit_image_static``."""
    from popscore.trainer.calibration import calibrate_interval
    from popscore.trainer.export import export_and_promote, output_bounds

    chosen = min(IMAGE_TITLE_MODELS, key=lambda n: ref.val_mae[n])
    m = ref.models[chosen]
    calibration = calibrate_interval(m["model"], m["val"], temporal=False)
    metrics = [{"model": chosen, "age_h": 0.0, **ref.metrics[chosen]}]
    extra = {
        "variant": "image",
        "modalities": ["content", "text", "visual"],
        "fusion": ("late: the mean of a title model and an image model (both with the content features)"
                   if chosen == "mtaf_late_fusion" else "MTAF attention over the content, text and visual vectors"),
        "target": "log1p(ups): the post's final upvotes",
        "horizon": HORIZON,
        "horizon_note": "the source holds one upvote count per post, collected long after posting (months to "
                        "years): the final count, not one at a fixed age",
        "image_encoder": {"name": "popscore_image_encoder", "version": table.image_encoder,
                          "embedding": "EfficientNet-Lite0 global-average-pooled 1280-d, trainer/image_encoder.py "
                                       "preprocessing"},
        "text_encoder": "popscore_text_encoder (MiniLM token states)",
        "bounds": output_bounds(m["fit"], False),
        "interval_calibration": calibration,
        "recipe_model": chosen,
        "chosen_by": f"validation MAE among {list(IMAGE_TITLE_MODELS)}: "
                     + ", ".join(f"{n} {ref.val_mae[n]:.4f}" for n in IMAGE_TITLE_MODELS),
    }
    info = export_and_promote(
        m["model"], "static", m["val"], Path(cfg.model_repo), spec=features.DEFAULT_SPEC, metrics=metrics,
        window=ref.split.window, dataset=DATASET, platform=PLATFORM, seed=cfg.seed, force=cfg.force,
        train_config=config_record(cfg), extra_metadata=extra, name=MODEL_NAME,
    )  # fmt: skip
    info["chosen"] = chosen
    log(f"export {MODEL_NAME}: {info}")
    return info


# ------------------------------------------------------------------------------------------------ heat maps


def occlusion_map(image_chw: np.ndarray, score, patch: int, stride: int, batch: int = 32) -> tuple[np.ndarray, float]:
    """Occlusion sensitivity: the predicted log1p score of the picture minus that with a grey square (0 after
    normalisation, i.e. mid-grey) over each position, averaged per pixel over the squares covering it.
    Positive: the region raises the prediction. ``score`` maps [B, 3, 224, 224] to [B] predictions."""
    size = image_chw.shape[-1]
    base = float(score(image_chw[None])[0])
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    boxes = [(t, l) for t in starts for l in starts]
    drops = []
    for lo in range(0, len(boxes), batch):
        chunk = np.repeat(image_chw[None], len(boxes[lo:lo + batch]), 0)
        for k, (t, l) in enumerate(boxes[lo:lo + batch]):
            chunk[k, :, t:t + patch, l:l + patch] = 0.0
        drops.append(base - score(chunk))
    drops = np.concatenate(drops)
    total, count = np.zeros((size, size)), np.zeros((size, size))
    for d, (t, l) in zip(drops, boxes):
        total[t:t + patch, l:l + patch] += d
        count[t:t + patch, l:l + patch] += 1
    return total / np.maximum(count, 1), base


def served_scorer(model_path: Path, static_row: np.ndarray, tokens: np.ndarray, token_mask: np.ndarray, encoder):
    """[B, 3, 224, 224] -> [B] predicted log1p(ups) of one post (its title and features fixed) through the image
    encoder and the exported ONNX head, as served."""
    from popscore.trainer.export import onnx_predict

    def score(images: np.ndarray) -> np.ndarray:
        from popscore.trainer.image_encoder import embed_images

        emb = embed_images(encoder, list(images.astype(np.float32)))
        b = len(emb)
        inputs = {"static_features": np.repeat(static_row[None], b, 0),
                  **features.embedding_inputs(b, np.repeat(tokens[None], b, 0), np.repeat(token_mask[None], b, 0),
                                              visual_embedding=emb)}
        return onnx_predict(model_path, inputs)["log_score"][:, 0].astype(float)

    return score


def heatmaps(cfg: MemesConfig, table: MemesTable, ref: SplitResult, model_path: Path, out_dir: Path) -> list[dict]:
    """Occlusion maps for the test posts the exported model ranks highest and lowest (half each). The
    committed PNGs (``heatmap_dir``) hold the sensitivity alone: the data set's pictures belong to their
    posters and stay out of the repository; the overlays go to the (uncommitted) report folder."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from popscore.trainer.image_encoder import load_model, read_image

    encoder = load_model()
    pred = ref.preds[ref.extra.get("exported", "mtaf_image_title")]
    order = np.argsort(pred)
    picks = list(order[::-1][: (cfg.heatmaps + 1) // 2]) + list(order[: cfg.heatmaps // 2])
    out = []
    for rank, k in enumerate(picks):
        i = ref.split.test[k]
        row = table.frame.iloc[i]
        image = read_image(Path(row["image_path"]))
        mask = table.titles.mask[i]
        score = served_scorer(model_path, table.static[i], table.titles.tokens[i].astype(np.float32),
                              mask.astype(np.float32), encoder)
        sens, base = occlusion_map(image, score, cfg.occlusion_patch, cfg.occlusion_stride)
        lim = float(np.abs(sens).max()) or 1.0
        picture = np.clip(image.transpose(1, 2, 0) * 0.5 + 0.5, 0, 1)
        name = f"memes-occlusion-{row['id']}.png"
        for folder, overlay in ((out_dir / "heatmaps", True), (cfg.heatmap_dir, False)):
            if folder is None:
                continue
            Path(folder).mkdir(parents=True, exist_ok=True)
            fig, ax = plt.subplots(figsize=(3.6, 3.4))
            if overlay:
                ax.imshow(picture)
            ax.imshow(sens, cmap="RdBu_r", vmin=-lim, vmax=lim, alpha=0.55 if overlay else 1.0)
            ax.set_title(f"reddit {row['id']}: pred {np.expm1(base):,.0f} / real {row['ups']:,} ups\n"
                         f"red raises, blue lowers (max {lim:.3f} log1p)", fontsize=7)
            ax.axis("off")
            fig.tight_layout()
            fig.savefig(Path(folder) / name, dpi=90)
            plt.close(fig)
        out.append({"id": row["id"], "pred_ups": float(np.expm1(base)), "ups": int(row["ups"]), "file": name,
                    "max_abs_log1p_change": lim})
    return out


# ------------------------------------------------------------------------------------------------ recipe


def config_record(cfg: MemesConfig) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}


def run(cfg: MemesConfig) -> dict:
    """The whole recipe; returns the results (also results.json and report.md under report_dir/reddit-memes)."""
    import torch

    started = time.time()
    cfg.threads = cfg.threads or default_threads()
    torch.set_num_threads(cfg.threads)
    table = load_table(cfg)
    results_by_split = [run_split(cfg, table, s, keep_models=s.name == "reference") for s in splits(cfg, table)]
    ref = results_by_split[0]
    out_dir = Path(cfg.report_dir) / DATASET
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {
        "dataset": DATASET, "n_posts": len(table), "config": config_record(cfg), "image_encoder": table.image_encoder,
        "splits": [{"name": r.split.name, "window": r.split.window, "metrics": r.metrics, "val_mae": r.val_mae,
                    **r.extra} for r in results_by_split],
        "summary": summarise(results_by_split), "paired": paired_differences(results_by_split),
        "rule_vs_title": rule_against_title(results_by_split),
    }  # fmt: skip
    if table.ocr_words is not None:
        results["ocr"] = {"share_with_words": float(np.mean(table.ocr_words > 0)),
                          "median_words": float(np.median(table.ocr_words[table.ocr_words > 0]))
                          if np.any(table.ocr_words > 0) else 0.0,
                          "seconds_per_picture_mean": float(np.mean(table.ocr_seconds)),
                          "seconds_per_picture_median": float(np.median(table.ocr_seconds))}
    if table.views_check is not None:
        results["views"] = table.views_check
    served = served_recipe_model(cfg.model_repo) if cfg.model_repo is not None else None
    chosen = min(IMAGE_TITLE_MODELS, key=lambda n: ref.val_mae[n])
    if served is not None:
        # A new version must beat the served one where one window cannot mislead: on the folds, by two
        # standard errors of the paired difference (the same recipe model is the served one retrained).
        verdict = beats_on_folds(results_by_split, chosen, served) if chosen != served else {"wins": False}
        results["promotion"] = {"served": served, "candidate": chosen, **verdict}
        log(f"promotion: candidate {chosen} against served {served}: {verdict}")
    if cfg.model_repo is not None and (served is None or results["promotion"]["wins"] or cfg.force):
        info = export_image_static(cfg, table, ref)
        results["export"] = info
        ref.extra["exported"] = info["chosen"]
        if info.get("promoted") and cfg.heatmaps:
            path = Path(cfg.model_repo) / MODEL_NAME / str(info["version"]) / "model.onnx"
            results["heatmaps"] = heatmaps(cfg, table, ref, path, out_dir)
    results["train_seconds"] = time.time() - started
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=float))
    (out_dir / "report.md").write_text(render(results))
    log(f"done in {results['train_seconds']:.0f} s: {out_dir / 'report.md'}")
    return results


def summarise(results: list[SplitResult]) -> dict:
    """Per model: each metric's mean and standard error over the rolling-origin folds (without the reference
    split, which overlaps them), and the mean and standard error of its per-fold difference from
    ``mtaf_title`` (paired: the windows' difficulty, which moves every model, cancels)."""
    folds = [r for r in results if r.split.name != "reference"]
    if not folds:
        return {}

    def mean_se(values):
        v = np.asarray(values, float)
        return [float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")]

    out = {}
    for model in folds[0].metrics:
        out[model] = {k: mean_se([f.metrics[model][k] for f in folds]) for k in COLUMNS}
        out[model]["vs_title"] = {k: mean_se([f.metrics[model][k] - f.metrics[BASELINE][k] for f in folds])
                                  for k in COLUMNS}
    return out


BASELINE = "mtaf_title"  # the title-only model the image+title ones are compared with, fold by fold
# (model, model it is compared with) on the folds, paired: what the picture adds on top of the rest, and the rest
COMPARISONS = (
    ("lightgbm_author_image_title", "lightgbm_author_title"), ("lightgbm_author_image_title", "lightgbm_author_image"),
    ("lightgbm_author_title", "lightgbm_author"), ("lightgbm_author_image", "lightgbm_author"),
    ("mtaf_late_fusion", "mtaf_image"), ("stack_title_image", "mtaf_image"), ("stack_title_image", "mtaf_late_fusion"),
    ("lightgbm_author", "mtaf_content"), ("pair_ranker_image", "ridge_image"),
    # issue 20's picture signals, each against the same model family without them
    ("lightgbm_title_image", "lightgbm_title"), ("lightgbm_title_cues", "lightgbm_title"),
    ("lightgbm_title_image_cues", "lightgbm_title"), ("lightgbm_title_ocr", "lightgbm_title"),
    ("lightgbm_title_ocr_image", "lightgbm_title"), ("lightgbm_author_title_cues", "lightgbm_author_title"),
    ("lightgbm_author_title_ocr", "lightgbm_author_title"),
    ("lightgbm_author_title_ocr_image_cues", "lightgbm_author_title"),
    ("stack_title_ocr_image", "stack_title_image"), ("stack_title_image_cues", "stack_title_image"),
    # --views: each view against the centre crop in the same model family, then image+title against image-only
    ("ridge_image_whole", "ridge_image"), ("ridge_image_tiles", "ridge_image"), ("ridge_image_mid", "ridge_image"),
    ("ridge_image_views", "ridge_image"), ("mtaf_image_whole", "mtaf_image"), ("mtaf_image_views", "mtaf_image"),
    ("lightgbm_title_image_whole", "lightgbm_title_image"), ("lightgbm_title_image_views", "lightgbm_title_image"),
    ("lightgbm_title_image_views", "lightgbm_title"), ("lightgbm_author_title_image_views", "lightgbm_author_title"),
    ("stack_title_image_whole", "stack_title_image"), ("mtaf_late_fusion_whole", "mtaf_late_fusion"),
    ("mtaf_late_fusion_whole", "mtaf_image_whole"), ("stack_title_image_whole", "mtaf_image_whole"),
    ("stack_title_image_views", "mtaf_image_views"), ("stack_title_probe_views", "mtaf_image_views"),
    ("lightgbm_title_image_views", "mtaf_image_views"),
)


def rule_against_title(results: list[SplitResult]) -> dict:
    """Per model: ``beats_on_folds`` against title-only (``BASELINE``), the promotion rule's verdict, so a
    report says plainly which model, if any, would clear it."""
    folds = [r for r in results if r.split.name != "reference"]
    if len(folds) < 2:
        return {}
    return {m: beats_on_folds(results, m, BASELINE) for m in folds[0].metrics if m != BASELINE}


def paired_differences(results: list[SplitResult]) -> dict:
    """``COMPARISONS`` on the folds: per pair, each metric's mean difference and its standard error."""
    folds = [r for r in results if r.split.name != "reference"]
    out = {}
    for a, b in COMPARISONS:
        if len(folds) < 2 or a not in folds[0].metrics or b not in folds[0].metrics:
            continue
        d = {k: np.array([f.metrics[a][k] - f.metrics[b][k] for f in folds]) for k in COLUMNS}
        out[f"{a} - {b}"] = {k: [float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v)))] for k, v in d.items()}
    return out
COLUMNS = ("mae", "srcc", "acc_train_median", "acc_test_median", "acc_test_median_rank", "pairwise_2x")


def render(results: dict) -> str:
    """The Markdown report: one table per split, then the folds' mean ± sd."""
    lines = [f"# {DATASET}: static models on real pictures", "",
             f"{results['n_posts']} posts; target log1p(ups); image encoder {results['image_encoder']}.", ""]
    head = "| model | MAE | SRCC | acc @ train median | acc @ test median | acc @ test median (rank) | pairwise (>= 2x) |"
    for s in results["splits"]:
        w = s["window"]
        lines += [f"## {s['name']}: train {w['n_train_posts'] - w['n_val_posts']} + val {w['n_val_posts']}, "
                  f"test {w['n_test_posts']} posts, {next(iter(s['metrics'].values()))['n_pairs_2x']} test pairs >= 2x", "",
                  f"train median {s['train_median']:.3f}, test median {s['test_median']:.3f}; ridge alphas "
                  f"{s['ridge_title_alpha']}/{s['ridge_image_alpha']}/{s['ridge_both_alpha']}; ranker {s['pair_ranker']}",
                  "", head, "|" + "---|" * 7]
        for model, m in s["metrics"].items():
            lines.append(f"| {model} | " + " | ".join(f"{m[c]:.3f}" for c in COLUMNS) + " |")
        lines.append("")
    if results["summary"]:
        n = len(results["splits"]) - 1
        lines += [f"## rolling-origin folds: mean ± standard error over {n} windows", "", head, "|" + "---|" * 7]
        for model, m in results["summary"].items():
            lines.append(f"| {model} | " + " | ".join(f"{m[c][0]:.3f} ± {m[c][1]:.3f}" for c in COLUMNS) + " |")
        lines += ["", f"## the same, minus {BASELINE} in the same window (paired): mean ± standard error", "",
                  head, "|" + "---|" * 7]
        for model, m in results["summary"].items():
            d = m["vs_title"]
            lines.append(f"| {model} | " + " | ".join(f"{d[c][0]:+.3f} ± {d[c][1]:.3f}" for c in COLUMNS) + " |")
        lines.append("")
    if results.get("paired"):
        lines += ["## paired differences on the folds: mean ± standard error", "",
                  head.replace("| model |", "| difference |"), "|" + "---|" * 7]
        for pair, d in results["paired"].items():
            lines.append(f"| {pair} | " + " | ".join(f"{d[c][0]:+.3f} ± {d[c][1]:.3f}" for c in COLUMNS) + " |")
        lines.append("")
    winners = [m for m, v in results.get("rule_vs_title", {}).items() if v["wins"]]
    if results.get("rule_vs_title"):
        lines += [f"beats {BASELINE} by two standard errors of the paired difference on both the test-median and the "
                  f"pairwise accuracy (`beats_on_folds`): {', '.join(winners) or 'no model'}", ""]
    if "ocr" in results:
        o = results["ocr"]
        lines += [f"caption OCR: words found in {o['share_with_words']:.1%} of the pictures (median "
                  f"{o['median_words']:.0f} words where found); {o['seconds_per_picture_mean']:.2f} s per picture "
                  f"(median {o['seconds_per_picture_median']:.2f} s, wall, when the cache was filled)", ""]
    if "views" in results:
        v = results["views"]
        lines += [f"picture views: centre-crop view against the cached embedding, max abs diff "
                  f"{v['crop_max_abs_diff']:.2e}; {v['seconds']:.0f} s to read or compute them", ""]
    if "promotion" in results:
        lines += [f"promotion (served {results['promotion']['served']}): {json.dumps(results['promotion'])}", ""]
    if "export" in results:
        lines += [f"export: {json.dumps({k: v for k, v in results['export'].items() if k != 'candidate'})}", ""]
    for h in results.get("heatmaps", []):
        lines.append(f"- occlusion map {h['file']}: pred {h['pred_ups']:,.0f}, real {h['ups']:,} ups")
    return "\n".join(lines) + "\n"
