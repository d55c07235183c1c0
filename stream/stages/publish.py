"""Publish: model outputs -> prediction records -> the predictions topic, then the leaderboards and marks.

Every model output is clamped into the range its training data supports and flagged where it needed that or its
inputs lie outside that range (``serving/output_bounds.py``); a non-finite output is replaced by the fallback
(``fallback.py``). A prediction's leaderboard entry and its ``predicted_to`` mark are written only once it is in
Kafka, so a mark never claims a prediction that a crash lost; the caller awaits the returned futures before it
acknowledges its records (at-least-once). A temporal prediction older (``as_of``) than the one its post has
recorded (a re-score that raced a newer snapshot) is published but not recorded as the latest
(record_predictions.lua; ``popscore_predictions_not_latest_total``).
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

from popscore import features as F
from popscore.contract import PredictionFlag
from popscore.serving.output_bounds import bound_outputs
from popscore.serving.routing import OTHER_LABEL, Route
from popscore.settings import Settings
from popscore.stream.failpoints import Failpoints
from popscore.stream.fallback import FALLBACK_PLATFORM_LABEL, LOG1P_AGE_H, PERSISTENCE_MODEL, PERSISTENCE_VERSION, \
    SCORE_NOW, count_fallback, persistence_log_score
from popscore.stream.leaderboard import Leaderboards
from popscore.stream.metrics import WorkerMetrics
from popscore.stream.online_accuracy import eval_ages_reached
from popscore.stream.predictions import NO_FLAGS, encode, latest_view, prediction_records
from popscore.stream.redis_schema import RecordedPrediction, eval_field
from popscore.stream.stages.features import ScoringJob, take
from popscore.stream.stages.infer import Inferred

RISING_INDEX = F.DYNAMIC_FEATURE_NAMES.index("dlog_score_last_h")
NON_FINITE = "non_finite"  # fallback reason: the model set's output was NaN or infinite
FALLBACK, OUT_OF_RANGE, WITHOUT_POST = (PredictionFlag.FALLBACK.value, PredictionFlag.OUT_OF_RANGE.value,
                                        PredictionFlag.WITHOUT_POST.value)
MEDIA_REJECTED = PredictionFlag.MEDIA_REJECTED.value


class Publish:
    def __init__(self, settings: Settings, metrics: WorkerMetrics, send_many, boards: Leaderboards,
                 failpoints: Failpoints) -> None:
        self.topic = settings.kafka.topics.predictions
        self.age_tolerance_h = settings.worker.online_age_tolerance_h
        self.metrics = metrics
        self.send_many = send_many  # async (topic, [(key, value), ...]) -> delivery futures
        self.boards = boards
        self.failpoints = failpoints

    async def jobs(self, jobs: list[ScoringJob], inferred: list[Inferred]) -> list:
        """The futures of the jobs' outputs still being delivered."""
        deliveries = []
        for job, (results, elapsed) in zip(jobs, inferred):
            deliveries += await self.job(job, results, elapsed)
        return deliveries

    async def job(self, job: ScoringJob, results: list, elapsed: float) -> list:
        kind, spec, now = job.kind, job.spec, time.time()
        if job.model_set is None:
            rows = list(range(len(job.post_ids)))
            records = self._fallback_records(job, rows, None, now)
        else:
            records, rows, non_finite = self._model_records(job, results, elapsed, now)
            if non_finite and kind == "temporal":
                records += self._fallback_records(job, non_finite, [NON_FINITE] * len(non_finite), now)
                rows += non_finite
            elif non_finite:  # no static fallback: nothing to go on at upload
                count_fallback(self.metrics, kind, [Route(r.platform, None, NON_FINITE, job.model_set.platform)
                                                    for r in take(job.routes, non_finite)])
        as_of, created, categories = job.as_of, job.created, job.categories
        rising = job.inputs["dynamic_features"][:, RISING_INDEX] if kind == "temporal" else None
        # A prediction stands for evaluation age t if made within one sequence bin after t (YouTube's are 6 h).
        tolerance = self.age_tolerance_h or spec.bin_s / 3600.0
        ages, tolerance = ((0.0,), 1.0) if kind == "static" else (spec.eval_ages_h, tolerance)
        recorded = []
        for r, i in zip(records, rows):
            age_h = (as_of[i] - created[i]) / 3600.0 if kind == "temporal" else 0.0
            kept = tuple((eval_field(r["model_name"], r["model_version"], age), r["log_score"])
                         for age in eval_ages_reached(age_h, ages, tolerance))
            recorded.append(RecordedPrediction(
                r["post_id"], r["score"], 0.0 if rising is None else float(rising[i]), job.routes[i].platform,
                categories[i] if categories else None, encode(latest_view(r)).decode(),
                float(created[i]) + spec.horizon_s, kept, int(as_of[i]), job.routes[i].label != OTHER_LABEL))
        self.metrics.records_out.labels(self.topic).inc(len(records))
        self.failpoints.hit("before_publish")
        deliveries = await self.send_many(self.topic, [(r["post_id"].encode(), encode(r)) for r in records])
        return [asyncio.ensure_future(self._record_delivered(kind, recorded, deliveries))]  # overlaps the next step

    async def _record_delivered(self, kind: str, recorded: list[RecordedPrediction], deliveries: list) -> None:
        await asyncio.gather(*deliveries)
        self.failpoints.hit("after_delivery")
        self.metrics.predictions_not_latest.inc(await self.boards.record(kind, recorded))

    def _model_records(self, job: ScoringJob, results: list, elapsed: float, now: float
                       ) -> tuple[list[dict], list[int], list[int]]:
        """(records, the job row of each, rows whose output was not finite) of a model set's inference: every
        output bounded by the range its version declares, flagged where it needed that."""
        kind, model_set, spec = job.kind, job.model_set, job.spec
        dynamic = job.inputs.get("dynamic_features") if kind == "temporal" else None
        name, trained_for, label = model_set.name(kind), model_set.platform, model_set.platform
        records, rows, non_finite, offset = [], [], [], 0
        for result in results:
            n = len(result.outputs["log_score"])
            part = slice(offset, offset + n)
            bounded = bound_outputs(result.outputs["log_score"], result.outputs.get("log_interval"),
                                    model_set.bounds(kind, result.model_version),
                                    None if dynamic is None else dynamic[part, LOG1P_AGE_H],
                                    None if dynamic is None else dynamic[part, SCORE_NOW])
            outputs = {**result.outputs, "log_score": bounded.log_score, "log_interval": bounded.interval,
                       **{k: v[part] for k, v in (job.explanations or {}).items()}}
            kept: slice | np.ndarray = part  # the rows published from this result
            out_of_range = bounded.out_of_range
            if bounded.non_finite.any():
                good = ~bounded.non_finite
                non_finite += (np.flatnonzero(bounded.non_finite) + offset).tolist()
                kept, out_of_range = np.flatnonzero(good) + offset, out_of_range[good]
                outputs = {k: (v[good] if isinstance(v, np.ndarray) else [x for x, g in zip(v, good) if g])
                           for k, v in outputs.items() if v is not None}
            row_ids = range(len(job.post_ids))[kept] if isinstance(kept, slice) else kept.tolist()
            post_ids = job.post_ids[kept] if isinstance(kept, slice) else [job.post_ids[row] for row in row_ids]
            records += prediction_records(post_ids, kind, result.model_version, job.as_of[kept], int(spec.horizon_s),
                                          outputs, now, model_name=name,
                                          platforms=[job.routes[row].platform for row in row_ids],
                                          trained_for=trained_for, flags=self._flags(job, kept, out_of_range))
            rows += row_ids
            self.metrics.predictions.labels(kind, label, result.model_version, result.served_by).inc(len(row_ids))
            self.metrics.inference_seconds.labels(kind, label, result.model_version, result.served_by).observe(elapsed)
            self.metrics.inference_batch.labels(kind).observe(n)
            observe = self.metrics.predicted_log_score.labels(kind, label).observe
            for value in outputs["log_score"].tolist():
                observe(value)
            offset += n
        return records, rows, non_finite

    def _flags(self, job: ScoringJob, rows: slice | np.ndarray, out_of_range: np.ndarray | None,
               fallback: bool = False) -> list[tuple[str, ...]]:
        """Per row of ``rows`` (of the job): the flags of its prediction, counted per kind, model set (or
        'fallback') and flag. ``out_of_range``: per row of ``rows``, from the bounds."""
        n = len(range(len(job.post_ids))[rows]) if isinstance(rows, slice) else len(rows)
        without_post = np.zeros(n, bool) if job.without_post is None else job.without_post[rows]
        out_of_range = np.zeros(n, bool) if out_of_range is None else out_of_range
        first = (FALLBACK,) if fallback else NO_FLAGS
        label = FALLBACK_PLATFORM_LABEL if fallback else job.model_set.platform
        combos = {(False, False): first, (True, False): (*first, OUT_OF_RANGE), (False, True): (*first, WITHOUT_POST),
                  (True, True): (*first, OUT_OF_RANGE, WITHOUT_POST)}
        for flag, count in ((FALLBACK, n if fallback else 0), (OUT_OF_RANGE, int(out_of_range.sum())),
                            (WITHOUT_POST, int(without_post.sum()))):
            if count:
                self.metrics.flagged_predictions.labels(job.kind, label, flag).inc(count)
        flags = [combos[pair] for pair in zip(out_of_range.tolist(), without_post.tolist())]
        problems = (job.explanations or {}).get("media_problem")
        if problems is not None:
            row_ids = range(len(job.post_ids))[rows] if isinstance(rows, slice) else rows.tolist()
            rejected = [i for i, row in enumerate(row_ids) if problems[row] is not None]
            for i in rejected:
                flags[i] = (*flags[i], MEDIA_REJECTED)
            if rejected:
                self.metrics.flagged_predictions.labels(job.kind, label, MEDIA_REJECTED).inc(len(rejected))
        return flags

    def _fallback_records(self, job: ScoringJob, rows: list[int], reasons: list[str] | None, now: float
                          ) -> list[dict]:
        """Persistence predictions for ``rows`` of a temporal job. ``reasons``: why a model set did not score them
        (None: each row's route says)."""
        kept = np.asarray(rows, dtype=np.int64)
        routes = [job.routes[row] for row in rows]
        if reasons is None:
            count_fallback(self.metrics, "temporal", routes)
        else:  # a model set's outputs replaced: counted under that set
            count_fallback(self.metrics, "temporal", [Route(r.platform, None, why, job.model_set.platform)
                                                      for r, why in zip(routes, reasons)])
        outputs = {"log_score": persistence_log_score(job.inputs["dynamic_features"][kept]), "log_interval": None}
        self.metrics.predictions.labels("temporal", FALLBACK_PLATFORM_LABEL, PERSISTENCE_VERSION,
                                        "baseline").inc(len(rows))
        return prediction_records(take(job.post_ids, rows), "temporal", PERSISTENCE_VERSION, job.as_of[kept],
                                  int(job.spec.horizon_s), outputs, now, model_name=PERSISTENCE_MODEL,
                                  platforms=[r.platform for r in routes], trained_for=None,
                                  flags=self._flags(job, kept, None, fallback=True))
