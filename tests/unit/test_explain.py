import numpy as np

from popscore.trainer.explain import word_attention_summary


def test_word_attention_summary_ranks_wordpieces_by_lift_over_mean_pooling():
    words = [["[CLS]", "show", "hn", "[SEP]"], ["[CLS]", "rust", "hn", "[SEP]"], []]
    weights = np.array([[0.1, 0.6, 0.2, 0.1], [0.1, 0.2, 0.6, 0.1], [0, 0, 0, 0]])
    s = word_attention_summary(words, weights, top=2, min_count=1)
    assert s["titles"] == 2
    assert abs(s["special_token_share"] - 0.2) < 1e-9  # 0.1 + 0.1 per titled post
    # lift = weight x 4 tokens: show 2.4, hn (0.8 + 2.4) / 2 = 1.6, rust 0.8
    assert s["highest_lift"] == [["show", 2.4, 1], ["hn", 1.6, 2]]
    assert s["lowest_lift"] == [["rust", 0.8, 1], ["hn", 1.6, 2]]
    assert word_attention_summary(words, weights, min_count=3)["highest_lift"] == []
