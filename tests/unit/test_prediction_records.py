"""Model outputs become valid prediction.v1 records."""

import math

import numpy as np

from popscore.contract import Prediction, decode_record
from popscore.stream.predictions import _iso, _iso_all, encode, prediction_records


def test_records_validate_against_the_contract_and_carry_explanations():
    outputs = {
        "log_score": np.array([[math.log1p(99.0)], [0.0]], dtype=np.float32),
        "log_interval": np.array([[4.0, 5.0], [0.5, -0.1]], dtype=np.float32),
        "modality_weights": np.array([[0.7, 0.3, 0, 0], [1, 0, 0, 0]], dtype=np.float32),
        "time_attention": np.full((2, 4), 0.25, dtype=np.float32),
    }
    records = prediction_records(["a", "b"], "temporal", "3", np.array([1.7e9, 1.7e9 + 60]), 3600, outputs, 1.7e9 + 61)
    parsed = [decode_record(encode(r), accept=("prediction.v1",)) for r in records]
    assert all(isinstance(p, Prediction) for p in parsed)
    assert abs(parsed[0].score - 99.0) < 1e-3 and parsed[0].model_version == "3"
    assert parsed[0].interval == (math.expm1(4.0), math.expm1(5.0))
    assert parsed[1].interval[0] <= parsed[1].interval[1]  # a crossed quantile pair is reordered, not rejected
    assert parsed[0].explanation["modality_weights"]["content"] == 0.7
    assert parsed[0].explanation["time_attention"] == [0.25] * 4
    assert records[1]["as_of"] == "2023-11-14T22:14:20Z"


def test_timestamps_in_bulk_match_one_at_a_time():
    whole = np.array([0.0, 1.7e9, 1.7e9 + 1, 4102444800.0])
    assert _iso_all(whole) == [_iso(float(t)) for t in whole] == \
        ["1970-01-01T00:00:00Z", "2023-11-14T22:13:20Z", "2023-11-14T22:13:21Z", "2100-01-01T00:00:00Z"]
    assert _iso_all(np.array([1.5, 1.7e9])) == ["1970-01-01T00:00:01.500000Z", "2023-11-14T22:13:20Z"]


def test_word_attention_is_named_by_the_title_wordpieces():
    outputs = {
        "log_score": np.zeros((2, 1), dtype=np.float32),
        "word_attention": np.array([[0.1, 0.6, 0.3, 0.0], [0.5, 0.5, 0.0, 0.0]], dtype=np.float32),
        "words": [["[CLS]", "rust", "[SEP]"], ["[CLS]", "[SEP]"]],
    }
    records = prediction_records(["a", "b"], "static", "3", np.array([1.7e9, 1.7e9]), 3600, outputs, 1.7e9)
    parsed = [decode_record(encode(r), accept=("prediction.v1",)) for r in records]
    assert parsed[0].explanation["word_attention"] == [["[CLS]", 0.1], ["rust", 0.6], ["[SEP]", 0.3]]
    assert parsed[1].explanation["word_attention"] == [["[CLS]", 0.5], ["[SEP]", 0.5]]
    # without the wordpieces (the text encoder off) the weights name nothing and are left out
    del outputs["words"]
    assert "word_attention" not in prediction_records(["a", "b"], "static", "3", np.zeros(2), 3600, outputs,
                                                      1.7e9)[0]["explanation"]
