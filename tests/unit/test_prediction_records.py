"""Model outputs become valid prediction.v1 records."""

import json
import math

import numpy as np
import pytest

from popscore.contract import Prediction, RejectedRecord, decode_record, json_schemas
from popscore.stream.predictions import _iso, _iso_all, encode, latest_view, prediction_records

NAMED = {"model_name": "popscore_hackernews_temporal", "platforms": ["hackernews", "hackernews"],
         "trained_for": "hackernews"}


def test_records_validate_against_the_contract_and_carry_explanations():
    outputs = {
        "log_score": np.array([[math.log1p(99.0)], [0.0]], dtype=np.float32),
        "log_interval": np.array([[4.0, 5.0], [0.5, -0.1]], dtype=np.float32),
        "modality_weights": np.array([[0.7, 0.3, 0, 0], [1, 0, 0, 0]], dtype=np.float32),
        "time_attention": np.full((2, 4), 0.25, dtype=np.float32),
    }
    records = prediction_records(["a", "b"], "temporal", "3", np.array([1.7e9, 1.7e9 + 60]), 3600, outputs, 1.7e9 + 61,
                                 **NAMED)
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
    records = prediction_records(["a", "b"], "static", "3", np.array([1.7e9, 1.7e9]), 3600, outputs, 1.7e9, **NAMED)
    parsed = [decode_record(encode(r), accept=("prediction.v1",)) for r in records]
    assert parsed[0].explanation["word_attention"] == [["[CLS]", 0.1], ["rust", 0.6], ["[SEP]", 0.3]]
    assert parsed[1].explanation["word_attention"] == [["[CLS]", 0.5], ["[SEP]", 0.5]]
    # without the wordpieces (the text encoder off) the weights name nothing and are left out
    del outputs["words"]
    assert "word_attention" not in prediction_records(["a", "b"], "static", "3", np.zeros(2), 3600, outputs,
                                                      1.7e9, **NAMED)[0]["explanation"]


def test_records_name_the_model_its_platform_and_flags():
    outputs = {"log_score": np.array([[2.0], [3.0]]), "log_interval": np.array([[1.0, 2.5], [2.0, 4.0]])}
    records = prediction_records(["a", "b"], "temporal", "4", np.array([1.7e9, 1.7e9]), 3600, outputs, 1.7e9,
                                 model_name="popscore_hackernews_temporal", platforms=["hackernews", "hackernews"],
                                 trained_for="hackernews", flags=[(), ("out_of_range", "without_post")])
    parsed = [decode_record(encode(r), accept=("prediction.v1",)) for r in records]
    assert [(p.model_name, p.platform, p.trained_for) for p in parsed] == \
        [("popscore_hackernews_temporal", "hackernews", "hackernews")] * 2
    assert [p.flags for p in parsed] == [[], ["out_of_range", "without_post"]]
    assert latest_view(records[1])["flags"] == ("out_of_range", "without_post")
    assert latest_view(records[1])["model_name"] == "popscore_hackernews_temporal"


def test_the_fallback_record_has_no_interval_and_no_trained_for():
    outputs = {"log_score": np.array([[np.log1p(41.0)]]), "log_interval": None}
    (record,) = prediction_records(["a"], "temporal", "1", np.array([1.7e9]), 3600, outputs, 1.7e9,
                                   model_name="persistence", platforms=["mastodon"], trained_for=None,
                                   flags=[("fallback",)])
    parsed = decode_record(encode(record), accept=("prediction.v1",))
    assert record["interval"] is None and parsed.interval is None and parsed.trained_for is None
    assert parsed.score == pytest.approx(41.0) and parsed.flags == ["fallback"] and parsed.platform == "mastodon"
    assert b'"interval":null' in encode(record)


def test_a_record_without_the_new_fields_is_still_valid():
    """The new fields are additive: records of producers that predate them still validate."""
    old = {"schema": "prediction.v1", "post_id": "a", "model": "temporal", "model_version": "3",
           "as_of": "2025-01-01T00:00:00Z", "horizon_s": 3600, "score": 1.0, "log_score": 0.69,
           "interval": [0.5, 2.0], "explanation": {}, "produced_at": "2025-01-01T00:00:01Z"}
    parsed = decode_record(encode(old), accept=("prediction.v1",))
    assert parsed.model_name is None and parsed.flags is None


def test_unknown_flags_are_refused():
    record = prediction_records(["a"], "temporal", "1", np.array([1.7e9]), 3600, {"log_score": np.zeros((1, 1))},
                                1.7e9, model_name="persistence", platforms=["x"], trained_for=None,
                                flags=[("absurd",)])[0]
    with pytest.raises(RejectedRecord) as rejected:
        decode_record(encode(record), accept=("prediction.v1",))
    assert "flags" in rejected.value.detail


def test_the_published_schema_has_the_new_fields():
    schema = json_schemas()["prediction.v1"]
    assert {"model_name", "platform", "trained_for", "flags"} <= set(schema["properties"])
    assert not {"model_name", "platform", "trained_for", "flags"} & set(schema.get("required", []))
    assert "fallback" in json.dumps(schema) and "out_of_range" in json.dumps(schema)
