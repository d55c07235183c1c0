"""Online accuracy on replayed real data agrees with an offline computation on the same predictions."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections import defaultdict

import numpy as np
import pytest

from popscore import features as F
from popscore.contract import Post, Snapshot, encode_record
from popscore.settings import COUNTER_NAMES
from popscore.stream.online_accuracy import eval_ages_reached
from popscore.tools.replay import ReplayOptions, replay
from tests.integration.outcomes import read_all, wait_processed

pytestmark = [pytest.mark.integration, pytest.mark.data]


def scrape(url: str) -> dict[tuple[str, str, str, str], float]:
    """(metric, model, version, age) -> value for the online-accuracy gauges of the hackernews set."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in ("popscore_online_mae", "popscore_online_evaluated_predictions_total") and \
                    sample.labels["platform"] == "hackernews":
                labels = sample.labels
                out[(sample.name, labels["model"], labels["model_version"], labels["age_h"])] = sample.value
    return out


def test_online_mae_matches_the_offline_computation(private_stack, shared_data):
    from popscore import datasets

    settings = private_stack.settings
    endpoints = private_stack.state.endpoints_obj()
    loaded = datasets.load("hackernews", shared_data, limit=900)  # about ten days of stories
    events = [event.model_copy(update={"post_id": "oa-" + event.post_id}) for event in loaded.events()]
    result = asyncio.run(replay([(encode_record(e), e) for e in events], endpoints.broker_bootstrap,
                                settings.kafka.topics, ReplayOptions(create_topics=False, progress=False)))
    assert result.complete

    created = {e.post_id: e.created_at.timestamp() for e in events if isinstance(e, Post)}
    sequences: dict[str, list] = defaultdict(list)
    for e in events:
        if isinstance(e, Snapshot):
            sequences[e.post_id].append([int(e.observed_at.timestamp()),
                                         *[np.nan if getattr(e.counts, c) is None else getattr(e.counts, c)
                                           for c in COUNTER_NAMES]])
    clock = max(row[0] for rows in sequences.values() for row in rows)

    # What the worker should have kept: the first prediction per (model, version, evaluation age), read once
    # every replayed record is processed (a prediction missing from the read would be missing from the sums).
    wait_processed(settings, endpoints.broker_bootstrap, timeout_s=300)
    messages = read_all(settings, endpoints.broker_bootstrap, settings.kafka.topics.predictions)
    spec = private_stack_spec(settings)
    tolerance = settings.worker.online_age_tolerance_h or spec.bin_s / 3600.0
    kept: dict[tuple[str, str, str, str], float] = {}
    for message in messages:
        r = json.loads(message.value)
        if not r["post_id"].startswith("oa-") or r["trained_for"] != "hackernews":
            continue  # the fallback's predictions (posts scored before their post came) are evaluated apart
        if r["model"] == "static":
            ages = [0.0]
        else:
            age_h = (_epoch(r["as_of"]) - created[r["post_id"]]) / 3600.0
            ages = eval_ages_reached(age_h, spec.eval_ages_h, tolerance)
        for age in ages:
            kept.setdefault((r["post_id"], r["model"], r["model_version"], f"{age:g}"), r["log_score"])

    errors: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    weights = F.weight_matrix(["hackernews"], settings.score.weights_for, spec.counters)
    for (post_id, model, version, age), predicted in kept.items():
        if created[post_id] + spec.horizon_s > clock or post_id not in sequences:
            continue
        realised = F.target_log_score(spec, [np.array(sequences[post_id], dtype=float)],
                                      np.array([created[post_id]]), weights)[0]
        if realised == realised:
            errors[(model, version, age)].append(abs(predicted - realised))
    assert errors, "no post matured: the slice is shorter than the horizon"

    deadline = time.monotonic() + 60
    metrics_url = endpoints.as_dict()["worker_metrics"]
    while time.monotonic() < deadline:
        live = scrape(metrics_url)
        done = all(live.get(("popscore_online_evaluated_predictions_total", *k), 0) >= len(v) for k, v in errors.items())
        if done:
            break
        time.sleep(1)
    for (model, version, age), errs in errors.items():
        assert live[("popscore_online_evaluated_predictions_total", model, version, age)] == len(errs)
        assert live[("popscore_online_mae", model, version, age)] == pytest.approx(float(np.mean(errs)), rel=1e-6)


def private_stack_spec(settings) -> F.FeatureSpec:
    from popscore.serving.model_repository import list_models, version_metadata

    model = next(m for m in list_models(settings.stack.model_repo) if m.name == F.model_name("temporal", "hackernews"))
    meta = version_metadata(model, model.versions[-1])
    return F.FeatureSpec.from_dict(meta["feature_spec"]) if "feature_spec" in meta else F.DEFAULT_SPEC


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
