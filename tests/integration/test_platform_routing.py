"""Issue 18 through the real worker: platform names, counters and ages fuzzed, and every prediction honest.

A seeded mix of posts on known platforms, aliases, unknown platforms, and names the contract refuses (upper
case, unicode, empty-ish: dead-lettered, so their snapshots are scored without the post), with counters at 0,
huge (1e15), decreasing, and ages from before the upload to weeks after it. On the predictions topic: every
record names its model, version, the platform its model was trained for and the post's platform; every model
prediction lies inside the bounds its version declares, with the point inside its interval; a platform without a
model set only ever gets the fallback (persistence, flagged, no interval), never another platform's model; and
the worker's fallback and flag counters equal what the topic shows.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import urllib.request
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone

import pytest

from popscore import features as F
from popscore.contract import MAX_COUNTER
from popscore.serving.model_repository import list_models, version_metadata
from popscore.serving.model_sets import discover, repository_problem
from tests.integration.kafka_io import produce
from tests.integration.outcomes import check_outputs, iso, metric, read_all, send_snapshots, wait_processed

pytestmark = pytest.mark.integration

ALIASES = ["hn", "ycombinator", "hacker-news", "hacker_news"]  # the default aliases of hackernews
CANDIDATES = ["hackernews", "reddit", "youtube", "mastodon", "x", "z-", "tiktok_2", "unknown", "q" * 32]
REFUSED = ["HackerNews", "HN", "Reddit", "ünïcode", "платформа", "", " ", "-", " hn ", "a" * 33]  # by the contract
COUNTERS = ["normal", "zero", "huge", "decreasing"]
AGES = ["fresh", "at_creation", "weeks_old", "before_creation"]


def scrape(stack) -> dict[str, list[tuple[dict, float]]]:
    """metric sample name -> [(labels, value)] from the worker's /metrics."""
    return scrape_url(stack.state.endpoints_obj().as_dict()["worker_metrics"])


def scrape_url(url: str) -> dict[str, list[tuple[dict, float]]]:
    """metric sample name -> [(labels, value)] from a /metrics page."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    samples = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name].append((sample.labels, sample.value))
    return samples


def counts(samples: list[tuple[dict, float]], *labels: str) -> Counter:
    out: Counter = Counter()
    for sample_labels, value in samples:
        out[tuple(sample_labels[label] for label in labels)] += int(value)
    return +out


def build_traffic(seed: int = 18):
    """(posts [(key, value)], snapshots [(post_id, observed_at, value)], post platform per post_id)."""
    rng = random.Random(seed)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    posts, snapshots, platform_of = [], [], {}
    names = CANDIDATES + ALIASES + REFUSED
    for n, name in enumerate(names):
        for k in range(4):
            post_id = f"plat{n}-{k}"
            counter, age = COUNTERS[(n + k) % len(COUNTERS)], AGES[rng.randrange(len(AGES))]
            created = now - (timedelta(days=rng.uniform(10, 20)) if age == "weeks_old" else
                             timedelta(hours=rng.uniform(2, 8)))
            first = {"fresh": created + timedelta(minutes=rng.uniform(1, 50)), "at_creation": created,
                     "weeks_old": now - timedelta(hours=1), "before_creation": created - timedelta(hours=1)}[age]
            posts.append((post_id.encode(), json.dumps({
                "schema": "post.v1", "post_id": post_id, "platform": name, "created_at": iso(created),
                "text": {"title": f"{counter} {age} post on {name!r}"}}).encode()))
            platform_of[post_id] = name
            for i in range(3):
                at = first + timedelta(minutes=10 * i)
                value = {"normal": 5 * (i + 1) * (k + 1), "zero": 0, "huge": 10**15 + i,
                         "decreasing": 300 - 100 * i}[counter]
                snapshot = {"schema": "snapshot.v1", "post_id": post_id, "observed_at": iso(at),
                            "counts": {"likes": value, "comments": value // 3, "views": min(10 * value, MAX_COUNTER)}}
                snapshots.append((post_id, int(at.timestamp()), json.dumps(snapshot).encode()))
    return posts, snapshots, platform_of


def test_platforms_counters_and_ages_fuzzed_through_the_worker_give_honest_predictions(private_stack):
    settings, endpoints = private_stack.settings, private_stack.state.endpoints_obj()
    repo = settings.stack.model_repo
    served = {p for p, models in discover(repo).items() if repository_problem(p, models) is None}
    assert "hackernews" in served
    bounds = {(m.name, str(v)): version_metadata(m, v).get("bounds") for m in list_models(repo) for v in m.versions}
    posts, snapshots, platform_of = build_traffic()

    def canonical(name: str) -> str:
        name = name.strip().lower()
        return settings.serving.platform_aliases.get(name, name)

    refused = {p for p, name in platform_of.items() if name in REFUSED}
    routed = {p: canonical(name) for p, name in platform_of.items() if p not in refused}

    asyncio.run(produce(endpoints.broker_bootstrap, settings.kafka.topics.posts, posts))
    # Round by round (a prediction per round, at another age and count), envelopes and single records: micro-
    # batches mixing platforms.
    for i in range(3):
        send_snapshots(private_stack, snapshots[i::3], envelopes=i != 1)
        wait_processed(settings, endpoints.broker_bootstrap)  # each round scored before the next comes
    expected_times = defaultdict(list)
    for post_id, at, _ in snapshots:
        expected_times[post_id].append(at)
    # Snapshots of refused posts wait post_grace_s, then are scored without the post.
    check_outputs(private_stack, expected_times, platform=None, timeout_s=180)
    # Exact comparisons below (one letter per refused post, every record checked, counters equal to the
    # topic): complete reads once everything sent is processed.
    wait_processed(settings, endpoints.broker_bootstrap)
    letters = read_all(settings, endpoints.broker_bootstrap, settings.kafka.topics.deadletter)
    assert sorted(json.loads(m.value)["reason"] for m in letters) == ["invalid"] * len(refused)

    messages = read_all(settings, endpoints.broker_bootstrap, settings.kafka.topics.predictions)
    records = [json.loads(m.value) for m in messages]
    assert {r["post_id"] for r in records} == set(platform_of)
    flags_seen: Counter = Counter()
    for r in records:
        where = f"{r['post_id']} on {platform_of[r['post_id']]!r}: {r}"
        assert {"model_name", "model_version", "trained_for", "platform", "flags"} <= set(r), where
        flags_seen.update((r["model"], flag) for flag in r["flags"])
        post_id = r["post_id"]
        if post_id in refused:
            assert r["platform"] == "unknown" and "without_post" in r["flags"], where
        else:
            assert r["platform"] == routed[post_id], where
        if r["model_name"] == "persistence":
            assert r["trained_for"] is None and r["interval"] is None and "fallback" in r["flags"], where
            assert r["model"] == "temporal" and math.isfinite(r["log_score"]) and r["score"] >= 0, where
            continue
        # a model's prediction: only ever for a platform with a set of its own (or one of its aliases)
        assert post_id not in refused and r["trained_for"] == routed[post_id] in served, where
        assert r["model_name"] == F.model_name(r["model"], r["trained_for"]), where
        assert "fallback" not in r["flags"], where
        lo, hi = bounds[(r["model_name"], r["model_version"])]["log_score"]
        assert lo <= r["log_score"] <= hi, where
        low, high = r["interval"]
        assert math.expm1(lo) * (1 - 1e-9) <= low <= r["score"] <= high <= math.expm1(hi) * (1 + 1e-9), where

    by_post = defaultdict(list)
    for r in records:
        by_post[r["post_id"]].append(r)
    for post_id, rs in by_post.items():
        if post_id in refused or routed[post_id] not in served:  # unknown platforms: the fallback only
            assert {r["model_name"] for r in rs} == {"persistence"}, (post_id, platform_of[post_id])
        else:  # one static prediction at upload, temporal ones from the set
            assert [r["model_name"] for r in rs if r["model"] == "static"] == [F.model_name("static", routed[post_id])]
    assert any(r["trained_for"] == "hackernews" and platform_of[r["post_id"]] in ALIASES for r in records)
    assert flags_seen[("temporal", "out_of_range")] > 0  # 1e15 likes, weeks-old posts: beyond what training saw

    # The worker's counters say what the topic shows.
    samples = scrape(private_stack)
    fallback = counts(samples["popscore_fallback_predictions_total"], "kind")
    flagged = counts(samples["popscore_flagged_predictions_total"], "kind", "flag")
    assert fallback[("temporal",)] == flags_seen[("temporal", "fallback")]
    valid_without_set = sum(1 for p in routed.values() if p not in served)
    assert fallback[("static",)] == valid_without_set
    assert flagged == +Counter({key: n for key, n in flags_seen.items()})
    reasons = counts(samples["popscore_fallback_predictions_total"], "kind", "platform", "reason")
    assert {reason for _, _, reason in reasons} <= {"no_model", "not_servable", "non_finite"}
    assert ("static", "other", "no_model") in reasons  # mastodon, x, ...: one label for every unknown name
    assert metric(private_stack, "popscore_agent_crashes_total") == 0
    print(f"platform fuzz: {len(posts)} posts on {len(set(platform_of.values()))} platform names, "
          f"{len(snapshots)} snapshots, {len(records)} predictions, flags {dict(flags_seen)}")
