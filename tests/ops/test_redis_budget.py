"""Redis's memory budget: derived from the per-post bytes the bench measures, set as ``maxmemory`` by the
embedded stack and by docker-compose (whose literal value must be the settings' default)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from popscore.settings import RedisSettings, Settings, WorkerSettings
from popscore.tools.stack.components import Endpoints, redis_argv
from tests.ops.promql import REPO


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_a_sequence_of_24_observations_costs_what_the_bench_measured():
    # docs/benchmarks.md: "Redis bytes per post | 1,409" for 24 observations
    assert RedisSettings(observations_per_post=24).sequence_bytes() == 1_409


def test_the_budget_follows_the_capacity_and_can_be_set_outright():
    small, large = RedisSettings(capacity_posts=10_000), RedisSettings(capacity_posts=20_000)
    per_post = (large.memory_budget_bytes() - small.memory_budget_bytes()) / 10_000
    assert per_post == pytest.approx((small.sequence_bytes() + small.append_room_bytes() + small.post_extra_bytes) *
                                     small.memory_headroom, abs=1e-3)
    exact = RedisSettings(capacity_posts=10_000, append_room=0)
    assert small.memory_budget_bytes() - exact.memory_budget_bytes() == pytest.approx(
        10_000 * small.append_room_bytes() * small.memory_headroom, abs=1)
    assert small.memory_budget_bytes() > 10_000 * small.sequence_bytes()
    assert RedisSettings(maxmemory_bytes=2 * 1024 ** 3).memory_budget_bytes() == 2 * 1024 ** 3


def test_compose_redis_runs_with_the_default_budget_and_noeviction():
    command = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["redis"]["command"]
    assert int(option(command, "--maxmemory")) == Settings().redis.memory_budget_bytes()
    assert option(command, "--maxmemory-policy") == "noeviction"


def test_the_embedded_redis_gets_the_budget(tmp_path: Path):
    endpoints = Endpoints(host="127.0.0.1", broker_port=1, redis_port=2, triton_http_port=3, triton_grpc_port=4,
                          triton_metrics_port=5, worker_web_port=6, worker_metrics_port=7)
    argv = redis_argv(endpoints, tmp_path, 123_456_789)
    assert option(argv, "--maxmemory") == "123456789" and option(argv, "--maxmemory-policy") == "noeviction"


def test_an_allow_list_longer_than_the_category_bound_is_refused():
    with pytest.raises(ValueError, match="max_category_boards"):
        WorkerSettings(leaderboard_categories=["a", "b", "c"], max_category_boards=2)
    assert WorkerSettings(leaderboard_categories=["a", "b"], max_category_boards=2).max_category_boards == 2
