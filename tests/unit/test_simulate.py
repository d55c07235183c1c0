"""The simulator: valid time-ordered events, determinism, bounded state, and marginals that follow the
shipped fit (which is itself compared with the real data in docs/data.md)."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import datetime, timezone

import numpy as np
import pytest

from popscore import eventfile
from popscore.contract import Post, Snapshot
from popscore.tools.simulate import QUANTILE_LEVELS, SimulatorParams, sample_quantile, simulate


@pytest.fixture(scope="module")
def params() -> SimulatorParams:
    return SimulatorParams.load()  # the JSON shipped in tools/sample: no real data needed


@pytest.fixture(scope="module")
def events(params) -> list:
    return list(simulate(params, posts=1500, seed=7))


def test_events_are_time_ordered_with_each_post_first(events):
    last = None
    posted = set()
    for event in events:
        when = event.created_at if isinstance(event, Post) else event.observed_at
        assert last is None or when >= last
        last = when
        if isinstance(event, Post):
            posted.add(event.post_id)
        else:
            assert event.post_id in posted
    assert len(posted) == 1500


def test_counters_never_go_backwards_and_end_at_the_final(events, params):
    series = defaultdict(list)
    for event in events:
        if isinstance(event, Snapshot):
            series[event.post_id].append(event.counts.as_dict())
    assert len(series) == 1500  # every post is observed at least once
    for post_id, snaps in series.items():
        primary = params.platforms[post_id.split("-")[1]].primary
        values = [s[primary] for s in snaps]
        assert values == sorted(values), post_id


def test_same_seed_same_events_other_seed_other_events(params):
    first = [e.model_dump_json() for e in simulate(params, posts=50, seed=1)]
    again = [e.model_dump_json() for e in simulate(params, posts=50, seed=1)]
    other = [e.model_dump_json() for e in simulate(params, posts=50, seed=2)]
    assert first == again and first != other


def test_platform_mix_and_final_popularity_follow_the_fit(events, params):
    platforms = Counter(e.platform for e in events if isinstance(e, Post))
    for name, share in params.mix.items():
        assert platforms[name] / 1500 == pytest.approx(share, abs=0.05)
    finals: dict[str, float] = {}
    for event in events:
        if isinstance(event, Snapshot):
            platform = event.post_id.split("-")[1]
            finals[event.post_id] = event.counts.as_dict()[params.platforms[platform].primary]
    hn = np.log1p([v for k, v in finals.items() if k.startswith("sim-hackernews-")])
    fitted_median = float(sample_quantile(params.platforms["hackernews"].final_log, 0.5))
    assert np.median(hn) == pytest.approx(fitted_median, abs=0.25)


def test_sample_quantile_is_the_inverse_cdf():
    values = list(10.0 * QUANTILE_LEVELS)  # the quantile function of U(0, 10)
    assert float(sample_quantile(values, 0.5)) == pytest.approx(5.0)
    draws = sample_quantile(values, np.random.default_rng(0).random(20000))
    assert np.median(draws) == pytest.approx(5.0, abs=0.15)


def test_written_file_reads_back_valid(tmp_path, params):
    path = tmp_path / "sim.jsonl.gz"
    written = eventfile.write(path, simulate(params, posts=200, seed=3))
    summary = eventfile.summarise(path)
    assert summary.lines == written and not summary.rejected and summary.out_of_order == 0
    assert summary.posts == 200 and summary.snapshots_without_post == 0
    assert summary.first_time >= datetime(2024, 1, 1, tzinfo=timezone.utc)


def test_params_round_trip(tmp_path, params):
    path = tmp_path / "p.json"
    params.save(path)
    assert SimulatorParams.load(path) == params
