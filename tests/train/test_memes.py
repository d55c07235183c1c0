"""The memes recipe: the adapter's leakage-free author history, the pair and split metrics, occlusion maps on a
scorer whose output depends on one corner, and the recipe end to end on the earliest 300 real posts with the
export of popscore_reddit_image_static checked (skipped cleanly without ../shared/data or the encoders)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("pandas")

from popscore import features  # noqa: E402
from popscore.datasets import memes as memes_data  # noqa: E402
from popscore.trainer import memes  # noqa: E402
from popscore.trainer.caption_ocr import tesseract_available  # noqa: E402


def test_author_history_counts_only_strictly_earlier_posts():
    authors = np.array(["a", "b", "a", "a", "[deleted]", "[deleted]", "a"])
    created = np.array([10.0, 11.0, 12.0, 12.0, 13.0, 14.0, 9.0])
    # a at 9 -> 0; a at 10 -> 1 (9); the two a's at 12 -> 2 each (9, 10; not each other); deleted -> 0
    assert memes_data.author_prior_posts(authors, created).tolist() == [1, 0, 2, 2, 0, 0, 0]


def test_two_x_pairs_include_the_boundary():
    ups = np.array([150.0, 300.0, 301.0, 599.0])
    pairs = {tuple(p) for p in memes.two_x_pairs(np.log1p(ups)).tolist()}
    assert pairs == {(1, 0), (2, 0), (3, 0)}
    perfect = np.log1p(ups)
    reversed_ = -perfect
    p = memes.two_x_pairs(perfect)
    assert memes.pair_accuracy(perfect, p) == 1.0
    assert memes.pair_accuracy(reversed_, p) == 0.0
    assert memes.pair_accuracy(np.zeros(4), p) == 0.5  # ties count half


def test_median_split_accuracy_at_each_median():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    pred = np.array([5.0, 6.0, 7.0, 8.0])  # right order, shifted far above both medians
    m = memes.test_metrics(y, pred, train_median=4.5, pairs=memes.two_x_pairs(y))
    assert m["acc_train_median"] == 0.0  # everything called popular, nothing is above the training median
    assert m["acc_test_median"] == 0.5
    assert m["acc_test_median_rank"] == 1.0  # the ranking is perfect


def test_author_history_uses_only_posts_settled_by_the_gap():
    authors = np.array(["a", "a", "a", "[deleted]", "[deleted]", "b"])
    created = np.array([0.0, 5.0, 10.0, 0.0, 10.0, 10.0])
    target = np.array([1.0, 3.0, 100.0, 7.0, 8.0, 9.0])
    past = memes.author_past_popularity(authors, created, target, gap_s=5.0)
    # a at 0: none; a at 5: the post at 0 (exactly the gap); a at 10: posts at 0 and 5, never its own label
    assert np.isnan(past[0, 0]) and past[0, 1] == 0
    assert past[1].tolist() == [1.0, 1.0] and past[2].tolist() == [2.0, 2.0]
    assert np.isnan(past[4, 0]) and np.isnan(past[5, 0])  # deleted authors share no history; b has none


def test_stacking_weights_are_learnt_on_validation():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=200), rng.normal(size=200)
    y = 1.0 + 0.8 * a + 0.2 * b
    pred, coef = memes.stacked([a, b], y, [a[:5], b[:5]])
    assert np.allclose(coef, [1.0, 0.8, 0.2]) and np.allclose(pred, y[:5])


def test_pair_ranker_learns_a_linear_signal_from_close_pairs_only():
    """Embeddings of a few latent factors, popularity = one of them + noise: the ranker orders held-out pairs well
    above chance; with a window of zero days it has no training pair sharing a moment and ranks at chance."""
    rng = np.random.default_rng(1)
    n, dim = 900, features.VISUAL_DIM
    latent = rng.normal(size=(n, 16))
    x = latent @ rng.normal(size=(16, dim)) + 0.3 * rng.normal(size=(n, dim))
    y = 7.0 + 0.8 * latent[:, 3] + 0.5 * rng.normal(size=n)
    created = np.arange(n) * 3600.0
    fit, val, test = np.arange(500), np.arange(500, 650), np.arange(650, n)
    cfg = memes.MemesConfig(pair_components=32)
    ranker = memes.PairRanker(cfg)
    info = ranker.fit(x[fit], created[fit], y[fit], x[val], created[val], y[val])
    test_pairs = memes.two_x_pairs(y[test])
    assert info["n_pairs"] > 1000 and memes.pair_accuracy(ranker.score(x[test]), test_pairs) > 0.75
    assert memes.pair_accuracy(ranker.predict(x[test]), test_pairs) > 0.75  # the line to log1p keeps the order
    no_pairs = memes.PairRanker(memes.MemesConfig(pair_components=32, pair_window_days=0.0))
    assert no_pairs.fit(x[fit], created[fit], y[fit], x[val], created[val], y[val])["n_pairs"] == 0
    assert memes.pair_accuracy(no_pairs.score(x[test]), test_pairs) == 0.5


def test_a_candidate_wins_only_by_two_standard_errors_on_the_folds():
    def split_result(name, cand, inc):
        split = memes.Split(name, np.arange(1), np.arange(1), np.arange(1), {})
        metrics = {m: {"acc_test_median": v, "pairwise_2x": v} for m, v in (("cand", cand), ("inc", inc))}
        return memes.SplitResult(split, metrics, {}, {})

    steady = [split_result("reference", 0.0, 1.0)] + [split_result(f"fold{k}", 0.62 + 0.01 * k, 0.60 + 0.01 * k + 0.002 * (-1) ** k)
                                                      for k in range(6)]
    verdict = memes.beats_on_folds(steady, "cand", "inc")
    assert verdict["wins"] and verdict["pairwise_2x"][0] == pytest.approx(0.02)  # the reference split is not a fold
    noisy = [split_result(f"fold{k}", 0.62, 0.60 + 0.05 * (-1) ** k) for k in range(6)]
    assert not memes.beats_on_folds(noisy, "cand", "inc")["wins"]  # +0.02 on average, but ± 0.05 per window
    assert not memes.beats_on_folds(steady[:2], "cand", "inc")["wins"]  # one fold: no standard error


def test_every_model_gets_the_rule_verdict_against_title_only():
    def split_result(name, better, worse):
        split = memes.Split(name, np.arange(1), np.arange(1), np.arange(1), {})
        metrics = {m: {"acc_test_median": v, "pairwise_2x": v}
                   for m, v in ((memes.BASELINE, 0.6), ("steady_gain", better), ("noise", worse))}
        return memes.SplitResult(split, metrics, {}, {})

    folds = [split_result(f"fold{k}", 0.63 + 0.001 * k, 0.6 + 0.05 * (-1) ** k) for k in range(6)]
    verdicts = memes.rule_against_title([split_result("reference", 0.0, 1.0), *folds])
    assert set(verdicts) == {"steady_gain", "noise"}  # not the baseline against itself
    assert verdicts["steady_gain"]["wins"] and not verdicts["noise"]["wins"]
    assert memes.rule_against_title(folds[:1]) == {}


def test_paired_differences_are_taken_fold_by_fold():
    def split_result(name, a, b):
        split = memes.Split(name, np.arange(1), np.arange(1), np.arange(1), {})
        metrics = {m: {c: v for c in memes.COLUMNS} for m, v in (("lightgbm_author", a), ("mtaf_content", b))}
        return memes.SplitResult(split, metrics, {}, {})

    got = memes.paired_differences([split_result("reference", 9.0, 0.0), split_result("fold1", 0.6, 0.5),
                                    split_result("fold2", 0.7, 0.65)])
    assert list(got) == ["lightgbm_author - mtaf_content"]  # only comparisons of models the run has
    mean, se = got["lightgbm_author - mtaf_content"]["pairwise_2x"]
    assert mean == pytest.approx(0.075) and se == pytest.approx(0.025)  # differences 0.1 and 0.05; the reference not


def test_the_served_version_names_its_recipe_model(tmp_path):
    assert memes.served_recipe_model(tmp_path) is None
    (tmp_path / memes.MODEL_NAME / "1").mkdir(parents=True)
    (tmp_path / memes.MODEL_NAME / "1" / "metadata.json").write_text(json.dumps({"fusion": "late: the mean of"}))
    assert memes.served_recipe_model(tmp_path) == "mtaf_late_fusion"
    (tmp_path / memes.MODEL_NAME / "2").mkdir()
    (tmp_path / memes.MODEL_NAME / "2" / "metadata.json").write_text(json.dumps({"recipe_model": "mtaf_image_title"}))
    assert memes.served_recipe_model(tmp_path) == "mtaf_image_title"


def test_occlusion_map_highlights_the_corner_the_score_reads():
    """A scorer that only reads the top-left 56 px: occluding it changes the prediction, elsewhere nothing."""
    rng = np.random.default_rng(0)
    image = rng.uniform(0.5, 1.0, (3, 224, 224)).astype(np.float32)

    def score(batch):
        return batch[:, :, :56, :56].mean(axis=(1, 2, 3))

    sens, base = memes.occlusion_map(image, score, patch=48, stride=16)
    assert base == pytest.approx(float(image[:, :56, :56].mean()), rel=1e-5)
    corner, rest = sens[:56, :56].mean(), sens[112:, 112:]
    assert corner > 0.05
    assert np.abs(rest).max() == 0.0
    assert np.unravel_index(np.argmax(sens), sens.shape)[0] < 56


# ------------------------------------------------------------------------------------------------ real data


@pytest.fixture(scope="module")
def memes_root(shared_data):
    root = shared_data / memes_data.FOLDER
    if not (root / memes_data.FILE).is_file():
        pytest.skip(f"{root} is absent")
    return root


@pytest.mark.data
def test_adapter_reads_every_post_in_order(memes_root):
    data = memes_data.load_folder(memes_root)
    assert len(data) == 2025 and data.problems == {}
    assert np.all(np.diff(data.frame["created_at"].to_numpy()) >= 0)
    f = data.frame
    for i in np.random.default_rng(0).choice(len(f), 50, replace=False):
        earlier = ((f["author"] == f["author"][i]) & (f["created_at"] < f["created_at"][i])).sum()
        expected = 0 if f["author"][i] in memes_data.DELETED_AUTHORS else earlier
        assert f["author_prior_posts"][i] == expected
        post = data.posts[i]
        assert post.platform == "reddit" and post.media.image_uris[0].startswith("file://")
        assert "ups" not in post.model_dump_json()


@pytest.fixture(scope="module")
def recipe(memes_root, tmp_path_factory):
    from popscore.trainer.encoders import text_encoder_available
    from popscore.trainer.image_encoder import weights_path

    if not text_encoder_available():
        pytest.skip("no served text encoder in model_repo/")
    try:
        weights_path()
    except Exception as exc:  # the EfficientNet-Lite0 weights package is not installed
        pytest.skip(f"no image encoder weights: {exc}")
    tmp = tmp_path_factory.mktemp("memes")
    cfg = memes.MemesConfig(data_dir=memes_root.parent, limit=300, epochs=4, folds=1, heatmaps=1,
                            occlusion_stride=56, threads=1, model_repo=tmp / "repo", report_dir=tmp / "reports",
                            heatmap_dir=tmp / "maps", ocr=tesseract_available(), views=True)
    return cfg, memes.run(cfg)


@pytest.mark.data
def test_recipe_reports_every_model_on_the_same_pairs(recipe):
    cfg, results = recipe
    assert [s["name"] for s in results["splits"]] == ["reference", "fold1"]
    ref = results["splits"][0]
    assert ref["window"]["n_test_posts"] == 60  # the last 20 % of 300
    models = set(ref["metrics"])
    assert {"mean", "ridge_title", "ridge_image", "ridge_both", "lightgbm", "mtaf_title", "mtaf_image",
            "mtaf_image_title", "stack_title_image", "pair_ranker_image", *memes.AUTHOR_TREES} <= models
    cue_models = {"ridge_cues", "lightgbm_title", "lightgbm_title_cues", "stack_title_cues", "stack_title_image_cues"}
    ocr_models = {"ridge_ocr", "mtaf_title_ocr", "lightgbm_title_ocr", "stack_title_ocr", "stack_title+ocr_image"}
    assert cue_models <= models
    assert (ocr_models <= models) if tesseract_available() else not (ocr_models & models)  # skipped without it
    view_models = {"ridge_image_whole", "ridge_image_tiles", "ridge_image_mid", "ridge_image_views",
                   "mtaf_image_whole", "mtaf_image_views", "mtaf_late_fusion_whole", "stack_title_image_whole",
                   "stack_title_image_views", "stack_title_probe_views", "lightgbm_title_image_views"}
    assert view_models <= models
    assert results["views"]["crop_max_abs_diff"] <= 1e-3  # the views' centre crop is the cached embedding
    assert results["rule_vs_title"] == {}  # one fold: no standard error, so no verdict against title-only
    n_pairs = {m["n_pairs_2x"] for m in ref["metrics"].values()}
    assert len(n_pairs) == 1 and n_pairs.pop() > 100
    assert ref["metrics"]["mean"]["pairwise_2x"] == 0.5
    report = (cfg.report_dir / memes.DATASET / "report.md").read_text()
    assert "ridge_image" in report and "pairwise" in report
    # one fold: the mean over it is its value; the paired difference of the title model from itself is 0
    fold = results["splits"][1]["metrics"]
    assert results["summary"]["ridge_image"]["pairwise_2x"][0] == fold["ridge_image"]["pairwise_2x"]
    assert results["summary"][memes.BASELINE]["vs_title"]["pairwise_2x"][0] == 0.0
    diff = results["summary"]["ridge_image"]["vs_title"]["srcc"][0]
    assert diff == pytest.approx(fold["ridge_image"]["srcc"] - fold[memes.BASELINE]["srcc"])
    assert results["paired"] == {}  # one fold: no standard error, no paired comparison


@pytest.mark.data
def test_recipe_exports_the_image_static_model(recipe):
    from popscore.trainer.export import onnx_predict

    cfg, results = recipe
    assert results["export"]["promoted"] and results["export"]["version"] == 1
    model_dir = cfg.model_repo / memes.MODEL_NAME
    config = (model_dir / "config.pbtxt").read_text()
    assert f'name: "{memes.MODEL_NAME}"' in config and "visual_embedding" in config
    meta = json.loads((model_dir / "1" / "metadata.json").read_text())
    assert meta["platform"] == "reddit" and meta["kind"] == "static" and meta["model"] == memes.MODEL_NAME
    assert meta["modalities"] == ["content", "text", "visual"]
    assert meta["image_encoder"]["version"] == results["image_encoder"]
    assert meta["target"].startswith("log1p(ups)") and meta["horizon"] == "final"
    lo, hi = meta["bounds"]["log_score"]
    assert 6.0 < lo < hi < 13.0  # 494 .. 293,544 upvotes
    assert "margins" in meta["interval_calibration"]
    assert meta["inputs"] == [t.name for t in features.STATIC_INPUTS]

    # the models were fed the pictures: the examples' inputs carry each post's embedding, the visual modality on
    table = memes.load_table(memes.MemesConfig(data_dir=cfg.data_dir, limit=300))
    idx = np.arange(10, 20)
    fed = memes.examples(table, idx, text=False, visual=True).inputs_at(None, temporal=False)
    assert np.array_equal(fed["visual_embedding"], table.images[idx])
    assert fed["modality_mask"][:, 2].tolist() == [1.0] * 10 and fed["modality_mask"][:, 1].max() == 0.0
    # the served graph reads the picture: the same post with two different images scores differently
    i = np.arange(2)
    inputs = {"static_features": table.static[[0, 0]],
              **features.embedding_inputs(2, table.titles.tokens[[0, 0]].astype(np.float32),
                                          table.titles.mask[[0, 0]].astype(np.float32),
                                          visual_embedding=table.images[i])}
    out = onnx_predict(model_dir / "1" / "model.onnx", inputs)
    assert out["log_score"].shape == (2, 1)
    assert abs(float(out["log_score"][0, 0] - out["log_score"][1, 0])) > 1e-4
    assert out["modality_weights"][:, 2].min() > 0  # the visual modality takes part in the fusion
    assert results["heatmaps"] and (cfg.heatmap_dir / results["heatmaps"][0]["file"]).is_file()
