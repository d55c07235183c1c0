"""The shared feature code (popscore.features), tested directly on hand-made sequences."""

from __future__ import annotations

import math

import numpy as np
import pytest

from popscore import features as F
from popscore.settings import COUNTER_NAMES, ScoreSettings

LIKES = 1 + COUNTER_NAMES.index("likes")
COMMENTS = 1 + COUNTER_NAMES.index("comments")
T0 = 1_650_000_000.0  # a created_at
HN = {"likes": 1.0}


def obs(rows):
    """[(age_s, likes, comments)] -> stream layout [n, 6] with NaN for counters HN lacks."""
    a = np.full((len(rows), 1 + len(COUNTER_NAMES)), np.nan)
    for i, (age, likes, comments) in enumerate(rows):
        a[i, 0] = T0 + age
        a[i, LIKES] = likes
        a[i, COMMENTS] = comments
    return a


def seq_of(spec, seqs, age_s, weights=HN):
    w = np.stack([F.weight_vector(weights)] * len(seqs))
    return F.build_sequence(spec, seqs, np.full(len(seqs), T0), np.full(len(seqs), T0 + age_s), w)


def channel(spec, name):
    return F.seq_channel_names(spec).index(name)


def test_resampling_carries_last_value_forward_and_masks_before_creation():
    spec = F.FeatureSpec(bin_s=1800.0, n_bins=4)
    s = obs([(0, 3, 0), (1000, 10, 2), (2500, 30, 5)])
    out = seq_of(spec, [s], 3600.0)
    # bin ends at ages -1800, 0, 1800, 3600 -> masks 0, 1, 1, 1
    np.testing.assert_array_equal(out["sequence_mask"][0], [0, 1, 1, 1])
    score = out["sequence"][0, :, channel(spec, "log1p_score")]
    np.testing.assert_allclose(score, np.log1p([0, 3, 10, 30]), rtol=1e-6)
    dscore = out["sequence"][0, :, channel(spec, "dlog_score")]
    np.testing.assert_allclose(dscore, [0, math.log1p(3), math.log1p(7), math.log1p(20)], rtol=1e-6)
    has = out["sequence"][0, :, channel(spec, "has_obs")]
    np.testing.assert_array_equal(has, [0, 1, 1, 1])
    comments = out["sequence"][0, :, channel(spec, "log1p_comments")]
    np.testing.assert_allclose(comments, np.log1p([0, 0, 2, 5]), rtol=1e-6)
    assert out["score_now"][0] == 30


def test_no_look_ahead_and_order_independence():
    spec = F.FeatureSpec(n_bins=6)
    s = obs([(0, 3, 0), (1800, 10, 2), (3600, 30, 5), (7200, 90, 9)])
    cut = seq_of(spec, [s], 3600.0)
    only_past = seq_of(spec, [s[:3]], 3600.0)
    shuffled = seq_of(spec, [s[[3, 1, 0, 2]]], 3600.0)
    for k in ("sequence", "sequence_mask", "dynamic_features"):
        np.testing.assert_array_equal(cut[k], only_past[k])
        np.testing.assert_array_equal(cut[k], shuffled[k])
    later = seq_of(spec, [s], 7200.0)
    assert not np.array_equal(cut["sequence"], later["sequence"])


def test_batch_equals_one_by_one_with_padding():
    spec = F.FeatureSpec(n_bins=5)
    a = obs([(0, 1, 0), (900, 5, 1)])
    b = obs([(0, 7, 1), (600, 8, 1), (1200, 9, 2), (4000, 20, 3), (5000, 21, 3)])
    empty = np.zeros((0, 1 + len(COUNTER_NAMES)))
    batch = seq_of(spec, [a, b, empty], 5400.0)
    for i, s in enumerate([a, b, empty]):
        single = seq_of(spec, [s], 5400.0)
        for k in ("sequence", "sequence_mask", "dynamic_features"):
            np.testing.assert_array_equal(batch[k][i], single[k][0])
    assert batch["dynamic_features"][2, F.DYNAMIC_FEATURE_NAMES.index("has_obs")] == 0


def test_dynamic_features():
    spec = F.FeatureSpec()
    s = obs([(0, 3, 0), (1800, 10, 2), (3000, 40, 5)])
    d = seq_of(spec, [s], 7200.0)["dynamic_features"][0]
    names = F.DYNAMIC_FEATURE_NAMES
    assert d[names.index("log1p_age_h")] == pytest.approx(math.log1p(2.0))
    assert d[names.index("log1p_since_last_obs_h")] == pytest.approx(math.log1p((7200 - 3000) / 3600))
    assert d[names.index("log1p_n_obs")] == pytest.approx(math.log1p(3))
    assert d[names.index("log1p_score_now")] == pytest.approx(math.log1p(40))
    # score one hour ago (age 3600) was 40 too -> no growth in the last hour
    assert d[names.index("dlog_score_last_h")] == pytest.approx(0.0)


def test_score_weights_and_missing_counters():
    w = F.weight_vector({"favorites": 0.2, "comments": 0.3, "shares": 0.5})
    counts = np.array([[np.nan, 100.0, 10.0, 4.0, 5.0]])  # views missing (weight 0): ignored
    assert F.score_of(counts, w)[0] == pytest.approx(0.2 * 5 + 0.3 * 10 + 0.5 * 4)
    counts = np.array([[1.0, 1.0, np.nan, 4.0, 5.0]])  # a weighted counter missing counts as 0
    assert F.score_of(counts, w)[0] == pytest.approx(0.2 * 5 + 0.5 * 4)
    with pytest.raises(ValueError):
        F.weight_vector({"retweets": 1.0})


def test_static_and_temporal_inputs_match_the_serving_contract():
    spec = F.FeatureSpec()
    score = ScoreSettings()
    seqs = [obs([(0, 3, 0), (1800, 10, 2)]), obs([(0, 1, 1)])]
    created = np.full(2, T0)
    posts = [{"text": {"title": "Show HN: a thing?"}, "author": {"id": "x", "followers": 10}}, None]
    tokens = np.ones((2, 5, F.TEXT_DIM))
    tokens[1, 0, 0] = np.nan  # a broken title is masked, not passed on
    token_mask = np.array([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    static = F.build_static_inputs(spec, created, ["hackernews", "youtube"], posts, text_tokens=tokens,
                                   text_token_mask=token_mask)
    content = np.arange(2 * F.CONTENT_DIM, dtype=np.float64).reshape(2, F.CONTENT_DIM)
    temporal = F.build_temporal_inputs(spec, seqs, created, ["hackernews", "youtube"], score.weights_for,
                                       created + 3600, content)
    for kind, inp in (("content", static), ("temporal", temporal)):
        tensors = F.model_tensors(kind, spec)[0]
        assert [t.name for t in tensors] == list(inp)
        for t in tensors:
            assert inp[t.name].shape == (2,) + tuple(3 if d == -1 else d for d in t.dims), t.name
            assert inp[t.name].dtype == np.float32
            assert np.isfinite(inp[t.name]).all()
    np.testing.assert_array_equal(temporal["content_vector"], content)
    np.testing.assert_array_equal(static["modality_mask"], [[1, 1, 0, 0], [1, 0, 0, 0]])
    # token tensors are cut to the longest title in the batch; the masked title is all zero
    np.testing.assert_array_equal(static["text_token_mask"], [[1, 1, 1], [0, 0, 0]])
    assert not static["text_tokens"][1].any() and static["text_tokens"][0].all()
    # youtube scores views, which these sequences lack -> score 0
    assert temporal["dynamic_features"][1, F.DYNAMIC_FEATURE_NAMES.index("log1p_score_now")] == 0
    names = F.static_feature_names(spec)
    sf = static["static_features"]
    assert sf[0, names.index("platform_hackernews")] == 1 and sf[1, names.index("platform_youtube")] == 1
    assert sf[0, names.index("title_has_question")] == 1
    assert sf[0, names.index("log1p_followers")] == pytest.approx(math.log1p(10))
    assert sf[0, names.index("has_author_stats")] == 1 and sf[1, names.index("has_author_stats")] == 0


def test_missing_titles_give_one_masked_token():
    inputs = F.embedding_inputs(3)
    assert inputs["text_tokens"].shape == (3, 1, F.TEXT_DIM) and not inputs["text_tokens"].any()
    assert not inputs["text_token_mask"].any() and not inputs["modality_mask"][:, 1].any()
    # an all-padding batch keeps one (masked) position, so the tensor never has a zero-size axis
    inputs = F.embedding_inputs(2, np.ones((2, 4, F.TEXT_DIM)), np.zeros((2, 4)))
    assert inputs["text_tokens"].shape == (2, 1, F.TEXT_DIM) and not inputs["modality_mask"][:, 1].any()


def test_static_time_features():
    spec = F.FeatureSpec()
    # 2022-04-15 06:00 UTC, a Friday
    t = np.array([1650002400.0])
    sf = F.build_static_features(spec, t, ["other"])[0]
    names = F.static_feature_names(spec)
    assert sf[names.index("hour_sin")] == pytest.approx(1.0, abs=1e-6)
    assert sf[names.index("dow_sin")] == pytest.approx(math.sin(2 * math.pi * 4 / 7), abs=1e-6)
    assert sf[names.index("platform_other")] == 1


def test_target_is_last_observation_before_horizon():
    spec = F.FeatureSpec(horizon_s=10_000)
    s = obs([(0, 3, 0), (5000, 50, 0), (9999, 70, 0), (20000, 500, 0)])
    w = np.stack([F.weight_vector(HN)] * 2)
    y = F.target_log_score(spec, [s, np.zeros((0, 6))], np.full(2, T0), w)
    assert y[0] == pytest.approx(math.log1p(70))
    assert np.isnan(y[1])


def test_spec_hash_and_roundtrip():
    spec = F.FeatureSpec()
    assert F.FeatureSpec.from_dict(spec.to_dict()) == spec
    assert F.FeatureSpec.from_dict(spec.to_dict()).hash() == spec.hash()
    assert F.FeatureSpec(n_bins=8).hash() != spec.hash()
    assert spec.n_channels == len(F.seq_channel_names(spec))


def test_spec_from_metadata(tmp_path):
    import json

    spec = F.FeatureSpec(n_bins=8)
    for v in (1, 3):
        (tmp_path / "m" / str(v)).mkdir(parents=True)
    (tmp_path / "m" / "1" / "metadata.json").write_text(json.dumps({"feature_spec": F.FeatureSpec().to_dict()}))
    (tmp_path / "m" / "3" / "metadata.json").write_text(
        json.dumps({"feature_spec": spec.to_dict(), "feature_spec_hash": spec.hash()})
    )
    assert F.spec_from_metadata(tmp_path / "m") == spec  # the highest version
    assert F.spec_from_metadata(tmp_path / "m" / "1") == F.FeatureSpec()
    (tmp_path / "m" / "3" / "metadata.json").write_text(
        json.dumps({"feature_spec": spec.to_dict(), "feature_spec_hash": "bogus"})
    )
    with pytest.raises(ValueError):
        F.spec_from_metadata(tmp_path / "m")


def test_committed_model_sets_match_the_serving_contract():
    """Every model set in the repository lists the tensors its own FeatureSpec (stored with it) gives: the worker
    builds each set's inputs with that set's spec."""
    from pathlib import Path

    from popscore.serving.model_sets import discover

    sets = discover(Path(__file__).resolve().parents[2] / "model_repo")
    if not sets:
        pytest.skip("no model set in model_repo/")
    for platform, models in sets.items():
        for kind, model in models.items():
            spec = F.spec_from_metadata(model.path)
            cfg = (model.path / "config.pbtxt").read_text()
            assert f'name: "{F.model_name(kind, platform)}"' in cfg
            inputs, outputs = F.model_tensors(kind, spec)
            for t in inputs + outputs:
                assert f'name: "{t.name}"' in cfg, (model.name, t.name)


def tail_start(times: np.ndarray, as_of: float, lookback: float) -> int:
    """The index of the last observation at or before ``as_of - lookback`` (0 if none): where the tail the
    worker's merge returns begins."""
    return max(int(np.searchsorted(times, as_of - lookback, side="right")) - 1, 0)


@pytest.mark.parametrize("spec", [F.FeatureSpec(), F.FeatureSpec(bin_s=600.0, n_bins=4)],
                         ids=["8h-window", "growth-hour-longer-than-window"])
def test_features_of_a_sequences_tail_from_the_lookback_equal_those_of_the_whole_sequence(spec):
    rng = np.random.default_rng(3)
    seqs, tails, earlier, short = [], [], [], []
    for cadence_s in (150.0, 600.0, 1800.0, 7200.0):  # from denser to sparser than a bin
        gaps = rng.exponential(cadence_s, size=300)
        likes = np.cumsum(rng.integers(0, 20, size=300))
        likes[150] = likes[149] - 3  # a decrease, kept as observed
        s = obs([(age, like, like // 3) for age, like in zip(np.cumsum(gaps), likes)])
        start = tail_start(s[:, 0], s[-1, 0], F.lookback_s(spec))
        assert 0 < start < 299
        seqs.append(s)
        tails.append(s[start:])
        earlier.append(start)
        short.append(s[start + 1:])  # one observation too few: the value carried into the first bin is lost
    created, as_of = np.full(len(seqs), T0), np.array([s[-1, 0] for s in seqs])
    w = np.stack([F.weight_vector(HN)] * len(seqs))
    whole = F.build_sequence(spec, seqs, created, as_of, w)
    from_tail = F.build_sequence(spec, tails, created, as_of, w, n_earlier=np.array(earlier))
    for name in whole:
        np.testing.assert_array_equal(from_tail[name], whole[name], err_msg=name)
    too_short = F.build_sequence(spec, short, created, as_of, w, n_earlier=np.array(earlier) + 1)
    assert not np.array_equal(too_short["sequence"], whole["sequence"]) or \
        not np.array_equal(too_short["dynamic_features"], whole["dynamic_features"])
    without_count = F.build_sequence(spec, tails, created, as_of, w)  # the count of observations is needed too
    assert not np.array_equal(without_count["dynamic_features"], whole["dynamic_features"])
