"""What the publish stage (stream/stages/publish.py) makes of a scored job, without a stack: bounded model
outputs, non-finite ones replaced by the fallback, the fallback's own records, flags and their counters."""

from __future__ import annotations

import asyncio

import numpy as np
import orjson

from popscore import features as F
from popscore.contract import decode_record
from popscore.serving.output_bounds import DeclaredBounds
from popscore.serving.predictor import Inference
from popscore.serving.routing import NO_MODEL, Route
from popscore.settings import Settings
from popscore.stream.fallback import LOG1P_AGE_H, SCORE_NOW
from popscore.stream.failpoints import Failpoints
from popscore.stream.metrics import WorkerMetrics
from popscore.stream.stages.features import ScoringJob, group_rows
from popscore.stream.stages.publish import Publish

BOUNDS = {"static": DeclaredBounds(log_score=(1.0, 8.0)),
          "temporal": DeclaredBounds(log_score=(1.0, 8.0), age_h=(0.0, 6.0), log1p_score_now=(1.0, 7.5))}


class FakeSet:
    platform = "hackernews"

    def name(self, kind: str) -> str:
        return F.model_name(kind, self.platform)

    def bounds(self, kind: str, version=None) -> DeclaredBounds:
        return BOUNDS[kind]


class FakeBoards:
    def __init__(self) -> None:
        self.recorded = []

    async def record(self, kind, recorded) -> int:
        self.recorded += recorded
        return 0  # none older than a recorded one


def publisher_and_sent():
    sent = []

    async def send_many(topic, records):
        sent.extend(orjson.loads(value) for _, value in records)
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return [future]

    return Publish(Settings(), WorkerMetrics(), send_many, FakeBoards(), Failpoints()), sent


def dynamic(age_h: list[float], score_now: list[float]) -> np.ndarray:
    out = np.zeros((len(age_h), len(F.DYNAMIC_FEATURE_NAMES)), np.float32)
    out[:, LOG1P_AGE_H] = np.log1p(age_h)
    out[:, SCORE_NOW] = score_now
    return out


def counter(publisher, name: str) -> dict[tuple, float]:
    return {tuple(s.labels.values()): s.value for metric in publisher.metrics.registry.collect() if metric.name == name
            for s in metric.samples if s.name.endswith("_total")}


def publish(publisher, job, results):
    async def run():
        futures = await publisher.job(job, results, 0.01)
        await asyncio.gather(*futures)
    asyncio.run(run())


def temporal_job(model_set, n: int, routes=None, without_post=None) -> ScoringJob:
    route = Route("hackernews", model_set, None if model_set else NO_MODEL, "hackernews")
    return ScoringJob("temporal", model_set, [f"p{i}" for i in range(n)], np.full(n, 1.7e9), {
        "dynamic_features": dynamic([1.0] * (n - 1) + [30.0], [3.0] * n)}, F.DEFAULT_SPEC, np.full(n, 1.7e9 - 3600),
        routes or [route] * n, [None] * n, None, without_post)


def test_model_outputs_are_bounded_and_a_non_finite_one_becomes_the_fallback():
    publisher, sent = publisher_and_sent()
    job = temporal_job(FakeSet(), 4, without_post=np.array([False, False, True, False]))
    outputs = {"log_score": np.array([[np.nan], [50.0], [3.0], [3.0]], np.float32),
               "log_interval": np.array([[1, 2], [40, 60], [2, 4], [2, 4]], np.float32),
               "time_attention": np.full((4, 16), 1 / 16, np.float32)}
    publish(publisher, job, [Inference(outputs, "4", "triton")])
    by_post = {r["post_id"]: r for r in sent}
    assert set(by_post) == {"p0", "p1", "p2", "p3"}
    for record in sent:
        decode_record(orjson.dumps(record), accept=("prediction.v1",))
    assert (by_post["p0"]["model_name"], by_post["p0"]["trained_for"], by_post["p0"]["interval"]) == \
        ("persistence", None, None)
    assert by_post["p0"]["flags"] == ["fallback"] and by_post["p0"]["log_score"] == np.float32(3.0)
    assert by_post["p1"]["log_score"] == 8.0 and by_post["p1"]["flags"] == ["out_of_range"]
    assert by_post["p2"]["flags"] == ["without_post"] and by_post["p2"]["model_name"] == "popscore_hackernews_temporal"
    assert by_post["p3"]["flags"] == ["out_of_range"]  # 30 h old: past the 6 h the model was trained on
    assert all(r["interval"][0] <= r["score"] <= r["interval"][1] for r in sent if r["interval"])
    assert counter(publisher, "popscore_fallback_predictions") == {("temporal", "hackernews", "non_finite"): 1}
    assert counter(publisher, "popscore_flagged_predictions") == {
        ("temporal", "hackernews", "out_of_range"): 2, ("temporal", "hackernews", "without_post"): 1,
        ("temporal", "fallback", "fallback"): 1}
    predictions = counter(publisher, "popscore_predictions")
    assert predictions == {("temporal", "hackernews", "4", "triton"): 3, ("temporal", "fallback", "1", "baseline"): 1}
    # the leaderboards and the kept predictions name the model that made each
    kept = {p.post_id: [name for name, _ in p.kept_for_evaluation] for p in publisher.boards.recorded}
    assert kept["p0"] == ["eval:persistence:1:1"] and kept["p2"] == ["eval:popscore_hackernews_temporal:4:1"]


def test_a_platform_without_a_set_gets_persistence_only():
    publisher, sent = publisher_and_sent()
    route = Route("mastodon", None, NO_MODEL, "other")
    job = temporal_job(None, 2, routes=[route, route])
    publish(publisher, job, [])
    assert [(r["model_name"], r["platform"], r["flags"], r["interval"]) for r in sent] == \
        [("persistence", "mastodon", ["fallback"], None)] * 2
    assert counter(publisher, "popscore_fallback_predictions") == {("temporal", "other", "no_model"): 2}


def test_a_static_output_that_is_not_finite_is_not_published():
    publisher, sent = publisher_and_sent()
    route = Route("hackernews", FakeSet(), None, "hackernews")
    job = ScoringJob("static", FakeSet(), ["a", "b"], np.full(2, 1.7e9), {}, F.DEFAULT_SPEC, np.full(2, 1.7e9),
                     [route, route])
    outputs = {"log_score": np.array([[np.inf], [-4.0]], np.float32),
               "log_interval": np.array([[1, 2], [-5, -3]], np.float32),
               "modality_weights": np.full((2, 4), 0.25, np.float32)}
    publish(publisher, job, [Inference(outputs, "3", "local")])
    assert [(r["post_id"], r["log_score"], r["flags"]) for r in sent] == [("b", 1.0, ["out_of_range"])]
    assert counter(publisher, "popscore_fallback_predictions") == {("static", "hackernews", "non_finite"): 1}


def test_rows_are_grouped_by_model_set_and_one_set_is_not_copied():
    a, b = object(), object()
    routes = [Route("x", a, None, "x"), Route("y", None, NO_MODEL, "y"), Route("x", a, None, "x"),
              Route("z", b, None, "z")]
    assert group_rows(routes) == [(a, [0, 2]), (None, [1]), (b, [3])]
    assert group_rows(routes[:1] * 3) == [(a, None)]
