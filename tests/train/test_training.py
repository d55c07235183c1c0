"""Training on small slices of the real HN data, ONNX export parity and the promotion gate.

Skipped cleanly where ../shared/data is absent. Runs in about a minute on 2 cores."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from popscore import features  # noqa: E402
from popscore.trainer import data as D  # noqa: E402

pytestmark = pytest.mark.data

if not (D.shared_data_dir() / D.HN_DIR).exists():
    pytest.skip("../shared/data (Hacker News) is absent", allow_module_level=True)

SPEC = features.FeatureSpec()


@pytest.fixture(scope="module")
def table():
    return D.load_hackernews(limit=4000)


@pytest.fixture(scope="module")
def split(table):
    return D.chronological_split(table, 0.2, 48 * 3600.0)


@pytest.fixture(scope="module")
def titles(table, tmp_path_factory):
    """The titles through the committed served text encoder (what the worker gets from Triton)."""
    from popscore.trainer.encoders import cached_title_encodings, text_encoder_available

    if not text_encoder_available():
        pytest.skip("no served text encoder in model_repo/")
    return cached_title_encodings(table.title, cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def examples(table, split, titles):
    train_idx, test_idx, _ = split
    tr = D.make_examples(SPEC, table.take(train_idx), SPEC.train_ages_h, titles.take(train_idx))
    te = D.make_examples(SPEC, table.take(test_idx), SPEC.eval_ages_h, titles.take(test_idx))
    return tr, te


@pytest.fixture(scope="module")
def temporal_model(examples):
    from popscore.trainer.fitting import train_mtaf
    from popscore.trainer.train import TrainConfig

    tr, te = examples
    cfg = TrainConfig(epochs=2, progress=False, seed=0)
    model, history = train_mtaf(cfg, SPEC, tr, te.subset(te.age_h == 1.0), temporal=True)
    return model, history


def test_split_is_chronological_with_embargo(table, split):
    train_idx, test_idx, info = split
    assert len(train_idx) and len(test_idx)
    assert table.created_at[train_idx].max() < table.created_at[test_idx].min() - 48 * 3600.0
    assert info["n_test_posts"] == len(test_idx) == round(0.2 * len(table))
    assert not set(train_idx) & set(test_idx)


def test_examples_use_only_the_past(table, examples):
    tr, _ = examples
    # the observed score at age t never exceeds the final score, and at age 0 it is the first observation
    assert np.all(tr.log_now <= tr.target + 1e-6)
    first = tr.subset(tr.age_h == 0.0)
    firsts = np.array([np.log1p(table.seqs[i][0, 2]) for i in first.post_index])
    np.testing.assert_allclose(first.log_now, firsts, rtol=1e-5)


def test_baselines_and_temporal_model_learn(examples, temporal_model):
    from popscore.trainer.baselines import SzaboHuberman
    from popscore.trainer.fitting import predict_mtaf

    tr, te = examples
    model, history = temporal_model
    sh = SzaboHuberman().fit(tr.age_h, tr.log_now, tr.target)
    pred_sh = sh.predict(te.age_h, te.log_now)
    pred = predict_mtaf(model, te, temporal=True)
    for age in (0.5, 1.0, 2.0):
        m = te.age_h == age
        persist = np.abs(te.log_now[m] - te.target[m]).mean()
        mae_sh = np.abs(pred_sh[m] - te.target[m]).mean()
        mae_nn = np.abs(pred["log_score"][m] - te.target[m]).mean()
        assert mae_sh < persist, (age, mae_sh, persist)
        assert mae_nn < persist, (age, mae_nn, persist)
    # explanations are distributions over modalities / time steps / the title's tokens (none on padding)
    np.testing.assert_allclose(pred["modality_weights"].sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(pred["time_attention"].sum(1), 1.0, atol=1e-5)
    words = pred["word_attention"]
    mask = te.inputs_at(None, True)["text_token_mask"]
    np.testing.assert_allclose(words.sum(1), 1.0, atol=1e-5)
    assert np.all(words[mask == 0] == 0) and (mask == 0).any()
    uniform = mask / mask.sum(1, keepdims=True)  # mean pooling, what MiniLM's own embedding does
    assert np.abs(words - uniform).max() > 1e-2  # the weights depend on the words: attention is learnt
    assert np.all(pred["log_interval"][:, 0] <= pred["log_score"] + 1e-6)
    assert history[-1]["val_mae"] < 1.5


def test_export_parity_config_and_promotion_gate(tmp_path, monkeypatch, examples, temporal_model):
    from popscore.trainer import export as X

    monkeypatch.setattr(X, "CANDIDATES", tmp_path / "candidates")
    _, te = examples
    model, _ = temporal_model
    repo = tmp_path / "model_repo"
    kw = dict(spec=SPEC, metrics=[], window={"test_from": 0}, dataset="hackernews", platform="hackernews", seed=0)
    info = X.export_and_promote(model, "temporal", te, repo, **kw)
    assert info["promoted"] and info["version"] == 1
    assert info["parity_max_abs_diff"] <= 1e-4
    mdir = repo / "popscore_hackernews_temporal"
    cdir = repo / "popscore_hackernews_temporal_content"
    meta = json.loads((mdir / "1" / "metadata.json").read_text())
    assert meta["feature_spec_hash"] == SPEC.hash() and meta["version"] == 1
    assert meta["inputs"] == [t.name for t in features.TEMPORAL_INPUTS]
    assert meta["content_model"] == {"name": "popscore_hackernews_temporal_content", "version": 1}
    assert meta["platform"] == "hackernews"
    content_meta = json.loads((cdir / "1" / "metadata.json").read_text())
    assert content_meta["inputs"] == [t.name for t in features.STATIC_INPUTS]
    assert content_meta["outputs"] == ["content_vector", "modality_weights", "word_attention"]

    # parity on real inputs, at a batch size other than the export example's (dynamic batch dim): the
    # content encoder alone, then the head fed with the encoder's ONNX output, as the worker runs them
    inputs = te.inputs_at(slice(0, 777), True)
    assert inputs["text_tokens"].shape[1] > 2  # another token count than the export example's too
    content = X.onnx_predict(cdir / "1" / "model.onnx", inputs)
    assert content["content_vector"].shape == (777, model.cfg.d_model)
    got = {**content, **X.onnx_predict(mdir / "1" / "model.onnx", {**inputs, **content})}
    with torch.no_grad():
        ref = model(**{k: torch.from_numpy(inputs[k]) for k in model.input_names()})
    for name in model.output_names():
        assert got[name].shape[0] == 777
        assert np.abs(got[name] - ref[name].numpy()).max() <= 1e-4, name

    cfg = (mdir / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in cfg and "dynamic_batching" in cfg
    tensors = cfg.split("dynamic_batching")[0]  # the accelerator section below names "tensorrt"
    assert re.findall(r'name: "([a-z_]+)"', tensors) == ["popscore_hackernews_temporal"] + [
        t.name for t in features.TEMPORAL_INPUTS + features.TEMPORAL_OUTPUTS
    ]
    assert "TYPE_FP32" in cfg and "TYPE_FP64" not in cfg
    assert "dims: [ 64 ]" in cfg  # the content vector, not the 2,200 embedding floats

    # a worse candidate is rejected, an equally good one is promoted as version 2
    import copy

    worse = copy.deepcopy(model)
    with torch.no_grad():
        worse.head[-1].bias[0] += 1.0
    info = X.export_and_promote(worse, "temporal", te, repo, **kw)
    assert not info["promoted"] and info["candidate_mae"] > info["serving_mae"]
    assert X.versions(mdir) == [1]
    info = X.export_and_promote(model, "temporal", te, repo, **kw)
    assert info["promoted"] and X.versions(mdir) == [1, 2]

    # a serving version built on another feature spec is not comparable: no silent promotion
    meta_path = mdir / "2" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["feature_spec_hash"] = "0000000000000000"
    meta_path.write_text(json.dumps(meta))
    info = X.export_and_promote(model, "temporal", te, repo, **kw)
    assert not info["promoted"] and "feature spec" in info["reason"]
    info = X.export_and_promote(model, "temporal", te, repo, force=True, **kw)
    assert info["forced"] and "feature spec" in info["reason"]
    assert info["promoted"] and X.versions(mdir) == [1, 2, 3] == X.versions(cdir)


def test_conformal_margins_reach_the_coverage_on_held_out_data(examples, temporal_model):
    from popscore.metrics import regression_metrics
    from popscore.trainer.calibration import calibrate_interval
    from popscore.trainer.fitting import predict_mtaf

    import copy

    _, te = examples
    model = copy.deepcopy(temporal_model[0])
    # calibrate on one half of the test posts, check on the other half
    half = te.post_index % 2 == 0
    cal, held = te.subset(half), te.subset(~half)
    calib = calibrate_interval(model, cal, temporal=True, coverage=0.8)
    assert len(calib["margins"]) == len(calib["age_edges_h"]) + 1 == len(SPEC.eval_ages_h)
    out = predict_mtaf(model, held, temporal=True)
    for age in SPEC.eval_ages_h:
        m = held.age_h == age
        cov = regression_metrics(held.target[m], out["log_score"][m], out["log_interval"][m])["coverage_80"]
        assert 0.72 <= cov <= 0.88, (age, cov)


def test_rolling_origin_folds_are_consecutive_and_embargoed(table):
    folds = D.rolling_origin_folds(table, 3, 0.3, 48 * 3600.0)
    assert len(folds) == 3
    tests = [test for _, test, _ in folds]
    assert sum(map(len, tests)) == round(0.3 * len(table))
    for (train, test, info), later in zip(folds, [*tests[1:], None]):
        assert table.created_at[train].max() < table.created_at[test].min() - 48 * 3600.0
        if later is not None:  # the windows follow each other; each fold trains on more of the past
            assert table.created_at[test].max() <= table.created_at[later].min()
        assert info["n_test_posts"] == len(test) and info["n_train_posts"] == len(train)
    assert len(folds[0][0]) < len(folds[1][0]) < len(folds[2][0])


def test_served_blend_follows_the_validation_window_and_keeps_the_point_inside(examples, temporal_model):
    """Where the baseline is better on the validation window the blend leans on it; the exported point
    always lies inside its interval, whatever the margins."""
    import copy

    from popscore.trainer.baselines import SzaboHuberman
    from popscore.trainer.calibration import fit_blend
    from popscore.trainer.fitting import predict_mtaf

    tr, te = examples
    model = copy.deepcopy(temporal_model[0])
    sh = SzaboHuberman().fit(tr.age_h, tr.log_now, tr.target)
    alone = predict_mtaf(model, te, temporal=True)["log_score"]
    blend = fit_blend(model, te, sh)  # fitted on the examples it is checked on: it can only help there
    served = predict_mtaf(model, te, temporal=True)
    baseline = sh.predict(te.age_h, te.log_now)
    for i, age in enumerate(blend["ages_h"]):
        m = te.age_h == age
        w = blend["mtaf_weight"][i]
        np.testing.assert_allclose(served["log_score"][m], w * alone[m] + (1 - w) * baseline[m], atol=1e-4)
        mae = lambda p: np.abs(p[m] - te.target[m]).mean()  # noqa: E731
        assert mae(served["log_score"]) <= min(mae(alone), mae(baseline)) + 1e-6
    model.set_interval_margins([], [-5.0])  # a margin that would cut through any point
    out = predict_mtaf(model, te, temporal=True)
    assert np.all(out["log_interval"][:, 0] <= out["log_score"]) and np.all(out["log_score"] <= out["log_interval"][:, 1])
