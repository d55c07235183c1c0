"""The bench's own bookkeeping (pure parts): which envelope carries a snapshot, CPU per snapshot, the table."""

import json
import os
from pathlib import Path

import pytest

from popscore.tools.bench import Workload, _cpu_per_snapshot, _cpu_seconds, _envelopes, kept_up, render_table
from popscore.tools.replay import partition_for


def test_envelope_of_names_the_envelope_that_carries_each_snapshot():
    workload = Workload(23)
    envelope_of = {}
    records = _envelopes(workload, range(3, 5), [0, 1, 2], size=4, envelope_of=envelope_of)
    assert sorted(envelope_of) == [3, 4]
    assert len({key for key, _, _ in records}) == len(records)
    for k, where in envelope_of.items():
        for i, post_id in enumerate(workload.ids):
            key, value, partition = records[where[i]]
            assert key == f"batch-{where[i]}".encode()
            lines = json.loads(value)["snapshots"]
            assert len(lines) <= 4
            assert {"post_id": post_id, "observed_at": workload.round_time(k)}.items() <= \
                next(s for s in lines if s["post_id"] == post_id).items()
            assert partition == partition_for(post_id, [0, 1, 2])  # as a keyed send would place it


def test_cpu_per_snapshot_is_the_difference_in_microseconds():
    assert _cpu_per_snapshot({"worker": 1.0, "broker": 2.0}, {"worker": 1.5, "broker": 2.0, "new": 9.0}, 1000) == \
        {"worker": 500.0, "broker": 0.0}


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_cpu_seconds_of_this_process_grow_with_work():
    before = _cpu_seconds({"me": os.getpid()})
    sum(i * i for i in range(2_000_000))
    after = _cpu_seconds({"me": os.getpid()})
    assert after["load generator"] > before["load generator"]  # this process alone
    assert after["me"] >= after["load generator"]  # with its live child processes, if any


def test_the_table_shows_every_target_figure():
    results = {"batch_snapshots_per_s": 25334, "naive_snapshots_per_s": 91, "speedup_batch_vs_naive": 278.4,
               "sustained_target_per_s": 20000, "sustained_snapshots_per_s": 16155, "sustained_drain_s": 14.3,
               "sustained_staleness_p50_s": 9.02, "sustained_staleness_p99_s": 16.02,
               "sustained_predictions_per_snapshot": 0.516, "sustained_workers": 1,
               "sustained_staleness_p50_by_10s": [2.0, 9.0],
               "sustained_scaled_out_target_per_s": 20000, "sustained_scaled_out_snapshots_per_s": 19993,
               "sustained_scaled_out_drain_s": 0.1, "sustained_scaled_out_staleness_p50_s": 0.1,
               "sustained_scaled_out_staleness_p99_s": 0.3, "sustained_scaled_out_predictions_per_snapshot": 1.0,
               "sustained_scaled_out_workers": 2, "sustained_scaled_out_staleness_p50_by_10s": [0.1, 0.1],
               "sustained_scaled_out_kept_up": True, "sustained_scaled_out_produced_per_s": 20001,
               "sustained_kept_up": False, "sustained_produced_per_s": 19998,
               "record_snapshots_per_s": 3673,
               "speedup_record_vs_naive": 40.4, "latency_p50_ms": 270.9, "latency_p99_ms": 940.1,
               "latency_samples": 36730, "redis_bytes_per_post": 1408.8, "naive_redis_bytes_per_post": 3296.7,
               "redis_memory_ratio": 2.34, "batch_cpu_us_per_snapshot": {"worker": 29.3, "load generator": 2.5}}
    table = render_table(results, "popscore bench")
    assert table.startswith("`popscore bench`")
    for figure in ("25,334 snapshots/s", "14.3 s after the last envelope", "3,673 snapshots/s", "p50 270.9 ms",
                   "20,000 snapshots/s, 1 worker |", "20,000 snapshots/s, 2 workers |", "19,993 snapshots/s",
                   "0.1 s after the last envelope", "p50 per 10 s [2.0, 9.0]",
                   "worker 29.3", "load generator 2.5", "x2.34", "kept up: no; produced at 19,998/s",
                   "kept up: yes; produced at 20,001/s"):
        assert figure in table
    assert "load generator 2.5 |" in table and "worker 29.3, load" not in table  # the load generator stands apart


def test_kept_up_needs_every_post_a_short_drain_and_a_steady_age_in_every_10_s():
    steady = [0.2, 0.3, 0.2, 0.4, 0.3, 0.2, 0.3]
    assert kept_up(True, 0.2, steady)
    assert not kept_up(False, 0.2, steady)  # a post left unscored
    assert not kept_up(True, 1.7, steady)  # still draining after the last envelope
    assert not kept_up(True, 0.2, steady[:-1] + [1.2])  # falling behind by the end
    assert not kept_up(True, 0.2, steady[:3] + [None] + steady[4:])  # 10 s without a prediction
    assert not kept_up(True, 0.2, [])


def test_flat_cases_vary_one_dimension_at_a_time_and_repeat_in_reverse():
    from popscore.tools.bench import FlatConfig, flat_cases

    cfg = FlatConfig(live_posts=(1_000_000, 100_000), observations=(300, 25), repeats=2)
    assert flat_cases(cfg) == [(100_000, 25), (100_000, 300), (1_000_000, 25),
                               (1_000_000, 25), (100_000, 300), (100_000, 25)]


def test_flat_ratios_compare_the_means_of_the_costly_cases_with_the_cheapest():
    from popscore.tools.bench import flat_ratios

    def case(live, obs, worker, redis, memory):
        return {"live_posts": live, "observations": obs, "redis_bytes_per_post": memory,
                "cpu_us_per_snapshot": {"worker": worker, "redis": redis, "broker": 99.0}}

    ratios = flat_ratios([case(100, 25, 10.0, 2.0, 1000.0), case(100, 25, 12.0, 2.0, 1000.0),
                          case(100, 300, 11.0, 3.0, 13000.0), case(1000, 25, 22.0, 2.0, 1000.0)])
    assert ratios == {"100x300_vs_100x25": {"worker": 1.0, "redis": 1.5, "worker+redis": 1.08,
                                            "redis_bytes_per_post": 13.0},
                      "1000x25_vs_100x25": {"worker": 2.0, "redis": 1.0, "worker+redis": 1.85,
                                            "redis_bytes_per_post": 1.0}}


def test_a_preloaded_history_is_stored_as_the_merge_script_stores_records():
    from popscore.stream.redis_schema import decode_sequence
    from popscore.tools.bench import stored_history

    blob, last_likes = stored_history(4, 1_700_000_000, 1800)
    sequence = decode_sequence(blob)
    assert sequence[:, 0].tolist() == [1_700_000_000 - 1800 * k for k in (3, 2, 1, 0)]
    assert last_likes == 9 and sequence[-1, 2] == 9  # likes, then comments


def test_the_cluster_table_has_a_column_per_phase_in_run_order():
    from popscore.tools.bench import CLUSTER_PHASES, render_cluster_table

    phases = [[f"{phase}_redis_sustained", title] for phase, title, *_ in CLUSTER_PHASES[True]]
    results = {"phases": phases}
    for n, (prefix, _) in enumerate(phases):
        results.update({f"{prefix}_kept_up": True, f"{prefix}_produced_per_s": 1000 + n,
                        f"{prefix}_cpu_us_per_component": {"worker": 40 + n}, f"{prefix}_workers": 2,
                        f"{prefix}_target_per_s": 5000})
    table = render_cluster_table(results, "popscore bench --cluster --replica-acks --quick")
    header = next(line for line in table.splitlines() if line.startswith("| sustained phase"))
    assert header.index("replica_acks 0") < header.index("replica_acks 1")
    assert "| produced at (snapshots/s) | 1,000 | 1,001 |" in table
    assert "| CPU per snapshot (us) | worker 40 | worker 41 |" in table
