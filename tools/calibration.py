"""A fixed calibration workload, timed beside the bench's figures so they compare across machines.

The same bench on two machines of one kind can differ by 2x in CPU per snapshot (a slower CPU, a noisy
neighbour, another CPU generation behind the same name). The bench times this workload at its start and its end
and reports CPU per snapshot in *calibration rounds*: a component's CPU microseconds per snapshot divided by the
CPU microseconds one round took on the same machine in the same run. A figure that grows in rounds is the code's
doing; one that grows in microseconds only is the host's.

One round is a fixed slice of the worker's mix, single-threaded: decode a snapshot-like JSON record, touch a few
dicts, pack and unpack binary records, a share of a small NumPy feature computation over a batch, encode a
prediction-like JSON record. Its inputs come from a seeded generator and it returns a checksum of what it
computed, so a test can tell that it is the same work everywhere. Change the work and the checksum changes: then
raise ``CALIBRATION_VERSION`` (figures of different versions are not compared) and record the new checksum.
"""

from __future__ import annotations

import json
import os
import random
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import orjson

CALIBRATION_VERSION = 1
CALIBRATION_CHECKSUM = 1506146401
"""What ``calibration_workload()`` returns for this version (tests/unit/test_calibration_workload.py checks it)."""
SEED = 23
ROUNDS = 10_000
"""Rounds per repetition: ~0.1-0.2 s of CPU on the bench's 2-core machines."""
REPETITIONS = 5
BATCH = 256
"""Rounds per NumPy batch: the worker computes features for a micro-batch at once."""
_RECORD = struct.Struct("<Iddddd")  # this module's own layout: a change elsewhere must not change the workload
_OBSERVATIONS = 36


def _inputs(rounds: int, seed: int) -> tuple[list[bytes], np.ndarray]:
    rng = random.Random(seed)
    records = []
    for i in range(rounds):
        likes = rng.randrange(0, 5_000)
        records.append(json.dumps({"schema": "snapshot.v1", "post_id": f"cal-{i % 997:05d}",
                                   "observed_at": f"2026-01-01T00:{i % 60:02d}:{rng.randrange(60):02d}Z",
                                   "counts": {"likes": likes, "comments": likes // 4, "shares": rng.randrange(90)}},
                                  separators=(",", ":")).encode())
    counts = np.random.default_rng(seed).integers(0, 50, size=(BATCH, _OBSERVATIONS, 3)).cumsum(axis=1)
    return records, counts.astype(np.float64)


def calibration_workload(rounds: int = ROUNDS, seed: int = SEED) -> int:
    """Do ``rounds`` rounds of the fixed mix; returns a checksum (a CRC-32) of the results."""
    return _work(*_inputs(rounds, seed))


def _work(records: list[bytes], counts: np.ndarray) -> int:
    """The timed part: the inputs are made before."""
    crc = 0
    posts: dict[str, list[bytes]] = {}
    features = np.zeros(0)
    for i, raw in enumerate(records):
        snapshot = json.loads(raw, object_pairs_hook=dict, parse_int=int)  # the contract's decoder has hooks
        c = snapshot["counts"]
        blob = _RECORD.pack(i, float(c["likes"]), float(c["comments"]), float(c.get("shares", 0)), 0.0, 0.0)
        history = posts.setdefault(snapshot["post_id"], [])
        history.append(blob)
        if len(history) > 8:
            del history[0]
        latest = _RECORD.unpack(history[-1])
        if i % BATCH == BATCH - 1:  # a micro-batch's features
            scaled = np.log1p(counts * (1 + (i // BATCH) % 7))
            deltas = np.diff(scaled, axis=1)
            features = np.concatenate([scaled[:, -1], deltas.mean(axis=1), deltas[:, -6:].max(axis=1)], axis=1)
            crc = zlib.crc32(np.round(features.sum(axis=0), 6).tobytes(), crc)
        out = orjson.dumps({"schema": "prediction.v1", "post_id": snapshot["post_id"],
                            "as_of": snapshot["observed_at"], "score": round(latest[1] / (1 + latest[2]), 6),
                            "observations": len(history)})  # the worker encodes predictions with orjson
        crc = zlib.crc32(out, crc)
    return crc


def time_calibration(repetitions: int = REPETITIONS, rounds: int = ROUNDS) -> dict:
    """CPU time of one round (this thread's, so another process's load shows only as the slowdown it causes):
    the median of ``repetitions`` timings, with the smallest and largest."""
    per_round = []
    checksum = None
    inputs = _inputs(rounds, SEED)
    for _ in range(repetitions):
        started = time.thread_time()
        checksum = _work(*inputs)
        per_round.append(1e6 * (time.thread_time() - started) / rounds)
    return {"version": CALIBRATION_VERSION, "us_per_round": round(float(np.median(per_round)), 3),
            "min_us": round(min(per_round), 3), "max_us": round(max(per_round), 3),
            "rounds": rounds, "repetitions": repetitions, "checksum": checksum}


def machine_info() -> dict:
    """The CPU (from /proc/cpuinfo where there is one), the cores this process may use, and the load average."""
    info: dict = {"cpu_model": None, "logical_cpus": os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    fields = dict(line.split(":", 1) for line in text.splitlines()[:40] if ":" in line)  # the first CPU's entry
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    info["cpu_model"] = fields.get("model name")
    info["cpu_family_model_stepping"] = "/".join(fields.get(k, "?") for k in ("cpu family", "model", "stepping"))
    info["cache"] = fields.get("cache size")
    info["usable_cpus"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info["load_average"] = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    return info


def in_rounds(cpu_us: dict[str, float], us_per_round: float) -> dict[str, float]:
    """CPU microseconds per snapshot, per component, in calibration rounds of the same run."""
    return {name: round(us / us_per_round, 2) for name, us in cpu_us.items()}


def calibrated(results: dict) -> dict:
    """``results`` with every ``*_cpu_us_per_snapshot`` also as ``*_cpu_rounds_per_snapshot``, by the mean of the
    calibration timings at the start and the end of the run (``calibration_start`` / ``calibration_end``)."""
    timings = [results[k]["us_per_round"] for k in ("calibration_start", "calibration_end") if k in results]
    if not timings:
        return results
    us_per_round = sum(timings) / len(timings)
    out = dict(results, calibration_us_per_round=round(us_per_round, 3))
    if len(timings) == 2:
        out["calibration_drift"] = round(timings[1] / timings[0] - 1, 3)  # end against start
    for key, value in results.items():
        if key.endswith("_cpu_us_per_snapshot") and isinstance(value, dict):
            out[key.replace("_cpu_us_per_snapshot", "_cpu_rounds_per_snapshot")] = in_rounds(value, us_per_round)
    return out
