"""The bench's calibration workload (tools/calibration.py): the same work everywhere, and the normalisation."""

from pathlib import Path

import pytest

from popscore.tools.bench import calibration_rows, render_table
from popscore.tools.calibration import (CALIBRATION_CHECKSUM, CALIBRATION_VERSION, calibrated, calibration_workload,
                                        in_rounds, machine_info, time_calibration)


def test_the_workload_computes_the_same_results_as_recorded_for_its_version():
    # A change to the work changes the checksum: then CALIBRATION_VERSION goes up with the new checksum.
    assert calibration_workload() == CALIBRATION_CHECKSUM
    assert calibration_workload() == calibration_workload()
    assert calibration_workload(seed=24) != CALIBRATION_CHECKSUM  # the checksum depends on the work done
    assert calibration_workload(rounds=1_000) != CALIBRATION_CHECKSUM


def test_a_timing_reports_the_version_and_the_checksum_of_the_work_it_timed():
    timing = time_calibration(repetitions=3, rounds=300)
    assert timing["version"] == CALIBRATION_VERSION
    assert timing["checksum"] == calibration_workload(rounds=300)
    assert 0 < timing["min_us"] <= timing["us_per_round"] <= timing["max_us"]


def test_cpu_per_snapshot_in_rounds_divides_by_the_round():
    assert in_rounds({"worker": 30.0, "redis": 4.5}, 15.0) == {"worker": 2.0, "redis": 0.3}


def test_calibrated_adds_rounds_for_every_phase_by_the_mean_of_start_and_end():
    results = {"calibration_start": {"us_per_round": 10.0, "version": 1},
               "calibration_end": {"us_per_round": 12.5, "version": 1},
               "batch_cpu_us_per_snapshot": {"worker": 22.5, "broker": 4.5},
               "obs300_cpu_us_per_snapshot": {"worker": 45.0},  # a phase of another branch: its key is enough
               "batch_snapshots_per_s": 1000}
    out = calibrated(results)
    assert out["calibration_us_per_round"] == 11.25
    assert out["calibration_drift"] == 0.25  # the end's round took 25 % longer: the load changed
    assert out["batch_cpu_rounds_per_snapshot"] == {"worker": 2.0, "broker": 0.4}
    assert out["obs300_cpu_rounds_per_snapshot"] == {"worker": 4.0}
    assert out["batch_snapshots_per_s"] == 1000 and "batch_snapshots_per_s" in results
    assert calibrated({"batch_cpu_us_per_snapshot": {"worker": 1.0}}) == {"batch_cpu_us_per_snapshot": {"worker": 1.0}}


def test_the_same_code_on_a_host_twice_as_slow_gives_the_same_rounds():
    here = calibrated({"calibration_start": {"us_per_round": 15.0}, "calibration_end": {"us_per_round": 15.0},
                       "batch_cpu_us_per_snapshot": {"worker": 13.8}})
    there = calibrated({"calibration_start": {"us_per_round": 31.0}, "calibration_end": {"us_per_round": 29.0},
                        "batch_cpu_us_per_snapshot": {"worker": 27.6}})
    assert here["batch_cpu_rounds_per_snapshot"] == there["batch_cpu_rounds_per_snapshot"] == {"worker": 0.92}


def test_the_table_shows_the_machine_the_round_and_cpu_in_rounds_beside_microseconds():
    results = calibrated({
        "machine": {"cpu_model": "AMD EPYC", "cpu_family_model_stepping": "25/17/1", "usable_cpus": 2,
                    "load_average": [1.5, 1.0, 0.5]},
        "load_average_end": [2.5, 1.2, 0.6],
        "calibration_start": {"us_per_round": 14.0, "version": 1},
        "calibration_end": {"us_per_round": 16.0, "version": 1},
        "sustained_scaled_out_workers": 2,
        "sustained_scaled_out_cpu_us_per_snapshot": {"broker": 6.0, "worker": 22.5, "worker-2": 22.5,
                                                     "load generator": 4.5}})
    rows = calibration_rows(results)
    assert rows[0][1] == ("AMD EPYC (25/17/1), 2 CPUs; load average [1.5, 1.0, 0.5] at the start, "
                          "[2.5, 1.2, 0.6] at the end")
    assert rows[0][2] == "15.0 us per round (start 14.0, end 16.0, drift +14 %)"
    assert rows[1] == ("CPU per snapshot, sustained, 2 workers: us (calibration rounds)",
                       "broker 6.0 (0.4), worker 22.5 (1.5), worker-2 22.5 (1.5)", "load generator 4.5 (0.3)")
    assert calibration_rows({"batch_cpu_us_per_snapshot": {"worker": 1.0}}) == []  # a run without calibration
    one = calibration_rows({**results, "sustained_workers": 1, "sustained_cpu_us_per_snapshot": {"worker": 30.0},
                            "sustained_cpu_rounds_per_snapshot": {"worker": 2.0}})
    assert one[-1][:2] == ("CPU per snapshot, sustained, 1 worker: us (calibration rounds)", "worker 30.0 (2.0)")
    table = render_table({**TABLE_RESULTS, **results}, "popscore bench")
    assert "| CPU per snapshot, sustained, 2 workers: us (calibration rounds) | broker 6.0 (0.4)," in table


TABLE_RESULTS = {"batch_snapshots_per_s": 25334, "naive_snapshots_per_s": 91, "speedup_batch_vs_naive": 278.4,
                 "record_snapshots_per_s": 3673, "speedup_record_vs_naive": 40.4, "latency_p50_ms": 270.9,
                 "latency_p99_ms": 940.1, "latency_samples": 36730, "redis_bytes_per_post": 1408.8,
                 "naive_redis_bytes_per_post": 3296.7, "redis_memory_ratio": 2.34}
"""The rest of a run's results that the table needs."""


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="reads /proc/cpuinfo")
def test_machine_info_names_the_cpu_and_the_usable_cores():
    info = machine_info()
    assert info["cpu_model"] and info["usable_cpus"] >= 1 and len(info["load_average"]) == 3
