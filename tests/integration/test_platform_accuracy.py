"""Each shipped platform's model set, served by the real worker on that platform's own test window, is as
accurate online as the trainer measured offline.

Every model set in the repository is replayed its own data set's latest test window (the posts of
``data_window`` in its metadata, which no fold that trained it saw), paced, then the stream clock is moved
past the horizon so every post matures. Per platform and evaluation age, three figures are compared: the
worker's own online MAE (Prometheus), an independent computation from the predictions topic and the replayed
events, and the trainer's offline MAE of the same model on the same posts at that age (``popscore evaluate``'s
code). The offline figure of the whole test window is printed beside them: online, a post is evaluated at an
age only if it was observed then, so the populations differ.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections import defaultdict
from datetime import datetime, timedelta

import numpy as np
import pytest

from popscore import features as F
from popscore.contract import Counts, Post, Snapshot, encode_record
from popscore.serving.model_repository import list_models, version_metadata
from popscore.settings import COUNTER_NAMES
from popscore.stream.online_accuracy import eval_ages_reached
from popscore.tools.replay import ReplayOptions, replay
from tests.integration.kafka_io import consume_until

pytestmark = [pytest.mark.integration, pytest.mark.data]

def configure_private_stack(settings):
    """The replay sends each platform's posts first, but the topics are consumed independently and a post costs
    the worker more than a snapshot (title encoding, two inferences): in a burst its snapshots run ahead of it.
    They wait for it, in Redis, for ``post_grace_s``; here long enough for the whole replay, so every
    prediction is made with its post, as the accuracy comparison needs."""
    settings.worker.post_grace_s = 600.0


POSTS_PER_PLATFORM = 400  # the earliest posts of each test window: minutes of replay, enough to compare
BIN_SECONDS = 0.5  # replay pace: one sequence bin of event time in this many seconds
ONLINE_WITHIN = 0.15  # online MAE within 15 % of the offline test MAE (issue 18)
MIN_EVALUATED = 40  # ages with fewer matured predictions are reported, not judged


def served_sets(repo) -> dict[str, dict]:
    """platform -> the served temporal head's metadata."""
    sets = {}
    for model in list_models(repo):
        meta = version_metadata(model, model.versions[-1]) if model.versions else {}
        if meta.get("kind") == "temporal" and meta.get("platform"):
            sets[meta["platform"]] = meta
    return sets


def scrape(url: str) -> dict[tuple, float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in ("popscore_online_mae", "popscore_online_evaluated_predictions_total",
                          "popscore_predictions_without_post_total"):
                key = (s.name, s.labels.get("model"), s.labels.get("platform"), s.labels.get("model_version"),
                       s.labels.get("age_h"))
                out[key] = s.value
    return out


def test_every_platform_is_as_accurate_online_as_offline(private_stack, shared_data):
    from popscore import datasets

    settings = private_stack.settings
    endpoints = private_stack.state.endpoints_obj()
    sets = served_sets(settings.stack.model_repo)
    assert {"hackernews", "reddit", "youtube"} <= set(sets), sorted(sets)

    events_of, created, sequences, platform_of, spec_of = defaultdict(list), {}, defaultdict(list), {}, {}
    for platform, meta in sorted(sets.items()):
        spec_of[platform] = F.FeatureSpec.from_dict(meta["feature_spec"])
        loaded = datasets.load(meta["dataset"], shared_data)
        test_from = meta["data_window"]["test_from"]
        window = sorted((p for p in loaded.posts if p.created_at.timestamp() >= test_from),
                        key=lambda p: p.created_at)[:POSTS_PER_PLATFORM]
        keep = {p.post_id for p in window}
        for e in loaded.events():
            if e.post_id in keep:
                e = e.model_copy(update={"post_id": f"acc-{platform}-{e.post_id}"})
                events_of[platform].append(e)
                if isinstance(e, Post):
                    created[e.post_id], platform_of[e.post_id] = e.created_at.timestamp(), platform
                else:
                    sequences[e.post_id].append([e.observed_at.timestamp(), *[
                        np.nan if getattr(e.counts, c) is None else getattr(e.counts, c) for c in COUNTER_NAMES]])
    last = max(row[0] for rows in sequences.values() for row in rows)
    # One later post moves the stream clock (event time) past every replayed post's horizon.
    tick = datetime.fromtimestamp(last + max(s.horizon_s for s in spec_of.values()) + 3600).astimezone()
    events_of["clock"] = [Post(post_id="acc-clock", platform="hackernews", created_at=tick - timedelta(minutes=1)),
                          Snapshot(post_id="acc-clock", observed_at=tick, counts=Counts(likes=1))]
    sequences["acc-clock"].append([tick.timestamp(), *[np.nan] * len(COUNTER_NAMES)])
    # The stream has one event-time clock: the platforms go in the order of their eras, each to its end (every
    # post's last observation predicted), so no post matures while its snapshots are still coming.
    predicted_to: dict[str, float] = {}
    messages: list = []
    for name, events in sorted(events_of.items(), key=lambda kv: min(e.created_at.timestamp() for e in kv[1]
                                                                    if isinstance(e, Post))):
        # Paced at half a second per sequence bin: a snapshot is scored before the post's next one arrives, as
        # in production (a fast replay folds a post's snapshots into one prediction, skipping the ages between).
        speed = spec_of[name].bin_s / BIN_SECONDS if name in spec_of else None
        result = asyncio.run(replay([(encode_record(e), e) for e in events], endpoints.broker_bootstrap,
                                    settings.kafka.topics, ReplayOptions(create_topics=False, progress=False,
                                                                         speed=speed, max_idle_s=2.0 if speed else None)))
        assert result.complete
        pending = {e.post_id for e in events if isinstance(e, Post)}

        def done(ms, pending=pending):
            for m in ms[len(messages):]:
                r = json.loads(m.value)
                if r["model"] == "temporal":
                    predicted_to[r["post_id"]] = max(predicted_to.get(r["post_id"], 0.0), _epoch(r["as_of"]))
            messages[:] = ms
            return all(predicted_to.get(p, 0.0) >= sequences[p][-1][0] for p in pending if sequences.get(p))

        messages[:] = []
        messages = asyncio.run(consume_until(endpoints.broker_bootstrap, settings.kafka.topics.predictions, done,
                                             timeout_s=600))
        assert done(messages), f"{name}: not every post's last observation was predicted"

    # Independently: the first prediction of each post at each evaluation age, against the realised target.
    kept: dict[tuple, float] = {}
    kept_age: dict[tuple, float] = {}
    for m in messages:
        r = json.loads(m.value)
        platform = platform_of.get(r["post_id"])
        if platform is None or r["model"] != "temporal":
            continue
        assert "without_post" not in r["flags"], r  # every post was produced before its snapshots
        assert r["trained_for"] == platform and r["model_name"] == F.model_name("temporal", platform), r
        spec = spec_of[platform]
        tolerance = settings.worker.online_age_tolerance_h or spec.bin_s / 3600.0
        age_h = (_epoch(r["as_of"]) - created[r["post_id"]]) / 3600
        for age in eval_ages_reached(age_h, spec.eval_ages_h, tolerance):
            key = (r["post_id"], platform, r["model_version"], f"{age:g}")
            if key not in kept:
                kept[key], kept_age[key] = r["log_score"], age_h
    errors: dict[tuple, dict[str, float]] = defaultdict(dict)
    made_at: dict[tuple, float] = {}  # the age at which the kept prediction was made
    for (post_id, platform, version, age), predicted in kept.items():
        spec = spec_of[platform]
        weights = F.weight_matrix([platform], settings.score.weights_for, spec.counters)
        realised = F.target_log_score(spec, [np.array(sequences[post_id], float)], np.array([created[post_id]]),
                                      weights)[0]
        if realised == realised:
            errors[(platform, version, age)][post_id] = abs(predicted - realised)
            made_at[(platform, age, post_id)] = kept_age[(post_id, platform, version, age)]
    assert errors, "no prediction at an evaluation age"

    metrics_url = endpoints.as_dict()["worker_metrics"]
    deadline = time.monotonic() + 120
    while True:
        live = scrape(metrics_url)
        evaluated = {k: live.get(("popscore_online_evaluated_predictions_total", "temporal", *k), 0) for k in errors}
        if all(evaluated[k] >= len(v) for k, v in errors.items()) or time.monotonic() > deadline:
            break
        time.sleep(1)

    report, judged = [], 0
    for (platform, version, age), by_post in sorted(errors.items()):
        errs = list(by_post.values())
        online = live.get(("popscore_online_mae", "temporal", platform, version, age))
        assert evaluated[(platform, version, age)] == len(errs), (platform, age)
        assert online == pytest.approx(float(np.mean(errs)), rel=1e-6), (platform, age)
        test_window = next((row["mae"] for row in sets[platform]["metrics"]
                            if row["model"] == "mtaf_temporal" and f"{row['age_h']:g}" == age), None)
        offline = offline_mae(settings.stack.model_repo, sets[platform]["dataset"], shared_data, platform,
                              {p.removeprefix(f"acc-{platform}-"): made_at[(platform, age, p)] for p in by_post})
        report.append(f"{platform} {age} h: online {online:.3f}, offline on the same posts {offline:.3f} "
                      f"(n {len(errs)}); offline on the whole test window "
                      f"{'-' if test_window is None else f'{test_window:.3f}'}")
        if len(errs) >= MIN_EVALUATED:
            judged += 1
            assert abs(online - offline) <= ONLINE_WITHIN * offline, report[-1]
    print("\n".join(report))
    assert judged, "no platform and age had enough matured predictions to compare"


def offline_mae(repo, dataset: str, data_dir, platform: str, ages: dict[str, float]) -> float:
    """The trainer's figure for these posts, each at the age its online prediction was made: the served ONNX
    graphs run by ``popscore evaluate``'s code on the trainer's examples. An online prediction stands for
    age t when made within one sequence bin after t, so it is compared with the trainer's at that moment."""
    from popscore.trainer import data as D
    from popscore.trainer.evaluate import discover_model_sets, load_dataset_data, predict_temporal, \
        title_encodings

    model_set = discover_model_sets(repo)[platform]
    table = load_dataset_data(dataset, data_dir).table
    index = {post_id: i for i, post_id in enumerate(table.post_id)}
    posts = table.take(np.array([index[p] for p in ages]))
    spec = model_set.temporal.spec
    parts = [D.make_examples(spec, posts.take(np.array([i])), (0.0, age)) for i, age in enumerate(ages.values())]
    ex = D.Examples({k: np.concatenate([p.inputs[k] for p in parts]) for k in parts[0].inputs},
                    *(np.concatenate([getattr(p, f) for p in parts]) for f in ("target", "age_h")),
                    np.concatenate([np.full(len(p), i) for i, p in enumerate(parts)]),
                    *(np.concatenate([getattr(p, f) for p in parts]) for f in ("log_now", "created_at")),
                    title_encodings(posts.title, repo))  # fmt: skip
    out = predict_temporal(model_set.temporal, model_set.content, ex)
    at = ex.age_h > 0
    return float(np.abs(out["log_score"][at] - ex.target[at]).mean())


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
