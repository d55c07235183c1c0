"""The worker's histograms resolve a single record's latency, and its labelled counters exist at zero from the
start (issue 21, item 6)."""

from __future__ import annotations

from prometheus_client import generate_latest

from popscore.contract import RejectReason
from popscore.settings import Settings
from popscore.stream.metrics import LATENCY_BUCKETS, WorkerMetrics
from popscore.stream.stages.merge import MERGE_OUTCOMES


def test_latency_buckets_are_fine_enough_for_a_single_record_p50():
    """Between 0.5 ms and 1 s no bucket is more than 1.5x the one below: a quantile interpolated inside one
    bucket is off by less than that ratio."""
    bounds = [b for b in LATENCY_BUCKETS if 0.0005 <= b <= 1.0]
    assert bounds[0] == 0.0005 and bounds[-1] == 1.0
    coarse = [(low, high) for low, high in zip(bounds, bounds[1:]) if high / low > 1.5 + 1e-9]
    assert coarse == []
    assert list(LATENCY_BUCKETS) == sorted(set(LATENCY_BUCKETS)) and LATENCY_BUCKETS[-1] >= 10.0


def test_the_latency_objective_is_a_bucket_bound():
    assert 0.25 in LATENCY_BUCKETS  # PopscoreEndToEndLatencyHigh compares p99 with 0.25 s


def exposition(metrics: WorkerMetrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_labelled_counters_exist_at_zero_for_every_known_label():
    topics = Settings().kafka.topics
    metrics = WorkerMetrics()
    before = exposition(metrics)
    metrics.initialise_series(topics, MERGE_OUTCOMES.values())
    text = exposition(metrics)
    expected = [f'popscore_records_consumed_total{{topic="{t}"}} 0.0' for t in (topics.posts, topics.snapshots)]
    expected += [f'popscore_records_produced_total{{topic="{t}"}} 0.0' for t in (topics.predictions, topics.deadletter)]
    expected += [f'popscore_dead_letters_total{{reason="{r.value}",topic="{t}"}} 0.0'
                 for r in RejectReason for t in (topics.posts, topics.snapshots)]
    expected += [f'popscore_batch_failures_total{{agent="{topics.snapshots}",kind="{k}"}} 0.0'
                 for k in ("transient", "error")]
    expected += [f'popscore_sequence_merges_total{{outcome="{o}"}} 0.0' for o in MERGE_OUTCOMES.values()]
    missing = [line for line in expected if line not in text]
    assert missing == []
    assert not any(line in before for line in expected)  # the check sees the difference initialise_series makes


def test_the_worker_initialises_its_series():
    """StreamWorker calls initialise_series: a worker that has consumed nothing already exposes the zeros."""
    from popscore.stream.worker import StreamWorker

    settings = Settings()
    worker = StreamWorker(settings, send=None, send_many=None)
    assert f'popscore_dead_letters_total{{reason="invalid",topic="{settings.kafka.topics.snapshots}"}} 0.0' \
        in exposition(worker.metrics)
