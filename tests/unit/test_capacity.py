"""The capacity model (tools/capacity.py, `popscore capacity`): monotonic, rounded up, assumptions applied, the
Redis budget formula reused, figures read from bench results, and docs/deployment.md's worked example current."""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from pathlib import Path

import pytest

from popscore.settings import RedisSettings
from popscore.tools.capacity import (DEFAULT_FIGURES, Assumptions, BenchFigures, figures_from_results, plan,
                                     render)
from popscore.tools.cli import main

REPO = Path(__file__).resolve().parents[2]
FIGURES = BenchFigures(source="test", phase="sustained", worker_us=30.0, redis_us=10.0, broker_us=5.0,
                       triton_us=8.0, predictions_per_snapshot=0.5, snapshot_bytes=100.0, prediction_bytes=400.0,
                       calibration_us_per_round=15.0)


def test_every_count_grows_with_the_rate_and_the_posts():
    counts = ("worker_replicas", "partitions", "redis_shards", "redis_memory_bytes", "gpus",
              "triton_cpu_cores_planned", "brokers", "broker_in_bytes_per_s")
    previous = None
    for rate, posts in [(1_000, 10_000), (20_000, 10_000), (20_000, 5_000_000), (300_000, 5_000_000),
                        (1_000_000, 10_000_000), (1_000_000, 200_000_000)]:
        cap = plan(rate, posts, FIGURES)
        if previous is not None:
            for name in counts:
                assert getattr(cap, name) >= getattr(previous, name), (name, rate, posts)
        previous = cap
    assert plan(1_000_000, 10_000_000, FIGURES).worker_replicas > plan(1_000, 10_000, FIGURES).worker_replicas


def test_counts_are_rounded_up_and_exact_multiples_are_not():
    figures = replace(FIGURES, worker_us=6.0)
    # 100,000/s x 6 us = 0.6 cores at 60 %: exactly one replica, not two from float noise
    assert plan(100_000, 1, figures).worker_replicas == 1
    assert plan(100_001, 1, figures).worker_replicas == 2
    assert plan(1, 1, figures).worker_replicas == 1


def test_assumptions_are_applied():
    base = plan(1_000_000, 10_000_000, FIGURES)
    assert base.worker_cores == 30.0 and base.worker_replicas == 50  # 30 cores at 60 %
    assert plan(1_000_000, 10_000_000, FIGURES, Assumptions(worker_utilisation=0.3)).worker_replicas == 100
    assert base.partitions == 100  # 2 per replica
    assert plan(1_000_000, 10_000_000, FIGURES, Assumptions(partitions_per_worker=4)).partitions == 200
    # rows: one per snapshot by assumption; the bench's Triton CPU is per row (8 us over 0.5 rows per snapshot)
    assert base.rows_per_s == 1_000_000 and base.triton_cpu_us_per_row == 16.0 and base.triton_cores == 16.0
    assert base.gpus == math.ceil(1_000_000 / (200_000 * 0.6))
    assert plan(1_000_000, 10_000_000, FIGURES, Assumptions(gpu_rows_per_s=1_000_000)).gpus == 2
    # Redis: 10 cores of main thread at 50 %
    assert base.redis_shards_for_cpu == 20
    # broker: 100 MB/s of snapshots, 400 MB/s of predictions in; out the same for one consumer group
    assert base.broker_in_bytes_per_s == base.broker_out_bytes_per_s == 500_000_000
    assert base.broker_replication_bytes_per_s == 1_000_000_000  # two followers
    two_groups = plan(1_000_000, 10_000_000, FIGURES, Assumptions(prediction_consumer_groups=2))
    assert two_groups.broker_out_bytes_per_s == 900_000_000
    assert plan(1_000_000, 10_000_000, FIGURES, Assumptions(replication_factor=1)).broker_replication_bytes_per_s == 0
    # the partitions follow the busiest topic's bytes when they exceed the replicas' need
    assert plan(1_000_000, 1, FIGURES, Assumptions(partition_bytes_per_s=1_000_000)).partitions == 400


def test_redis_memory_is_the_settings_budget_per_shard_plus_the_append_room():
    redis = RedisSettings()
    cap = plan(1_000, 10_000_000, FIGURES)  # few snapshots: memory decides the shards
    room = round(redis.sequence_bytes() * 0.95)  # the measured growth room, the settings' default
    assert cap.redis_append_room_bytes == room
    per_post = (redis.sequence_bytes() + room + redis.post_extra_bytes) * redis.memory_headroom
    assert cap.redis_shards == cap.redis_shards_for_memory == math.ceil(
        10_000_000 * per_post / (25 * 1024 ** 3 - redis.memory_base_bytes))
    shard = RedisSettings(capacity_posts=math.ceil(10_000_000 / cap.redis_shards))
    assert cap.redis_maxmemory_per_shard == shard.memory_budget_bytes() <= 25 * 1024 ** 3
    assert cap.redis_memory_bytes == cap.redis_shards * cap.redis_maxmemory_per_shard
    assert cap.redis_memory_with_replicas_bytes == 2 * cap.redis_memory_bytes
    exact = plan(1_000, 10_000_000, FIGURES, redis=RedisSettings(append_room=0))  # strings at their exact size
    assert exact.redis_shards < cap.redis_shards
    assert exact.redis_maxmemory_per_shard == RedisSettings(
        capacity_posts=math.ceil(10_000_000 / exact.redis_shards), append_room=0).memory_budget_bytes()
    short = plan(1_000, 10_000_000, FIGURES, redis=RedisSettings(observations_per_post=48))
    assert short.redis_memory_bytes < cap.redis_memory_bytes
    # a fixed maxmemory in the settings does not leak into the per-shard budget
    fixed = plan(1_000, 10_000_000, FIGURES, redis=RedisSettings(maxmemory_bytes=2 ** 30))
    assert fixed.redis_maxmemory_per_shard == cap.redis_maxmemory_per_shard


def test_cpu_figures_scale_to_the_deployment_hosts_by_their_calibration_round():
    faster = plan(1_000_000, 10_000_000, FIGURES, Assumptions(host_calibration_us=7.5))  # rounds twice as fast
    assert faster.cpu_scale == 0.5 and faster.worker_cores == 15.0 and faster.redis_cores == 5.0
    with pytest.raises(ValueError, match="calibration"):
        plan(1_000_000, 10_000_000, replace(FIGURES, calibration_us_per_round=None),
             Assumptions(host_calibration_us=7.5))


def test_figures_come_from_the_preferred_phase_of_bench_results():
    results = {"batch_cpu_us_per_snapshot": {"broker": 1.0, "redis": 2.0, "triton": 3.0, "worker": 4.0},
               "sustained_scaled_out_cpu_us_per_snapshot": {"broker": 6.0, "redis": 16.0, "triton": 15.0,
                                                            "worker": 22.0, "worker-2": 23.0, "load generator": 5.0},
               "sustained_scaled_out_predictions_per_snapshot": 0.98, "batch_predictions_per_snapshot": 0.25,
               "batch_bytes_per_snapshot": 124.6, "prediction_bytes": 777.0, "calibration_us_per_round": 14.0}
    figures = figures_from_results(results, "run.json")
    assert (figures.phase, figures.worker_us, figures.redis_us, figures.triton_us) == \
        ("sustained_scaled_out", 45.0, 16.0, 15.0)  # the workers summed; the load generator left out
    assert figures.predictions_per_snapshot == 0.98 and figures.prediction_bytes == 777.0
    assert figures.calibration_us_per_round == 14.0
    # the record as the broker stores it, where the run measured the worker's codec on it
    assert figures_from_results({**results, "prediction_wire_bytes": 90.5}, "run.json").prediction_bytes == 90.5
    assert figures_from_results(results, "run.json", "batch").worker_us == 4.0
    measured = {**results, "redis_bytes_per_post": 1_496.5, "config": {"memory_obs": 24}}
    text = render(plan(1_000, 1_000), figures_from_results(measured, "run.json"), Assumptions())
    assert "the bench measured 1,496.5 B for a sequence of 24 observations; the formula gives 1,409 B, +6%" in \
        " ".join(text.split())
    with pytest.raises(ValueError, match="record"):
        figures_from_results(results, "run.json", "record")
    cluster = {"cluster_redis_sustained_cpu_us_per_snapshot": {"broker": 6.0, "redis": 3.0, "redis-2": 4.0,
                                                               "redis-3": 5.0, "triton": 15.0, "worker": 22.0}}
    assert figures_from_results(cluster, "run.json", "cluster_redis_sustained").redis_us == 12.0  # every node
    with pytest.raises(ValueError, match="triton"):
        figures_from_results({"batch_cpu_us_per_snapshot": {"broker": 1.0, "redis": 2.0, "worker": 4.0}},
                             "run.json")


def test_the_plan_prints_every_assumption():
    text = render(plan(1_000_000, 10_000_000, FIGURES), FIGURES, Assumptions())
    for line in ("planned at 60% busy", "2 partitions per worker replica", "at most 5 MB/s", "planned at 50%",
                 "at most 25 GiB", "1 replica(s) per shard", "a GPU serves 200,000 rows/s", "replication factor 3",
                 "1 consumer group(s)", "100 MB/s in + out", "rows per snapshot 1.0", "x 1.25 per post",
                 "room for its appends 14,380 B", "APPEND (it doubles an outgrown string's allocation): 95%"):
        assert line in " ".join(text.split())
    assert "WARNING: that phase folded snapshots (0.5 predictions per snapshot" in text  # FIGURES were behind
    unfolded = replace(FIGURES, predictions_per_snapshot=1.0)
    assert "WARNING" not in render(plan(1_000_000, 10_000_000, unfolded), unfolded, Assumptions())


def test_deployment_doc_shows_the_commands_current_worked_example():
    doc = (REPO / "docs" / "deployment.md").read_text()
    example = re.search(r"popscore capacity --snapshots-per-s 1000000 --live-posts 10000000\n(.*?)\n```", doc, re.S)
    assert example, "docs/deployment.md lacks the worked example"
    assert example.group(1).strip() == render(plan(1_000_000, 10_000_000), DEFAULT_FIGURES, Assumptions()).strip()


def test_the_command_prints_the_plan_and_reads_bench_results(tmp_path, capsys):
    assert main(["capacity", "--snapshots-per-s", "1000000", "--live-posts", "10000000", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["capacity"]["worker_replicas"] == plan(1_000_000, 10_000_000).worker_replicas
    assert out["assumptions"]["gpu_rows_per_s"] == 200_000

    results = tmp_path / "bench.json"
    results.write_text(json.dumps({"sustained_cpu_us_per_snapshot": {"broker": 5.0, "redis": 10.0, "triton": 8.0,
                                                                     "worker": 30.0},
                                   "calibration_us_per_round": 15.0}))
    assert main(["capacity", "--snapshots-per-s", "1000000", "--live-posts", "10000000", "--bench-results",
                 str(results), "--worker-utilisation", "0.3", "--host-calibration-us", "7.5"]) == 0
    text = capsys.readouterr().out
    assert "15.0 cores busy -> 50 replicas" in text and "phase sustained" in text

    assert main(["capacity", "--snapshots-per-s", "1", "--live-posts", "1", "--bench-results", str(results),
                 "--phase", "batch"]) == 2
    assert "no CPU per snapshot of phase 'batch'" in capsys.readouterr().err
    assert main(["capacity", "--snapshots-per-s", "1", "--live-posts", "1", "--bench-results",
                 str(tmp_path / "absent.json")]) == 2
