"""The worker's Prometheus metrics, on a registry of its own (no module-level global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.records_in = Counter("popscore_records_consumed", "Kafka records consumed, by topic",
                                  ["topic"], registry=self.registry)
        self.snapshots_in = Counter("popscore_snapshots_accepted", "Valid snapshots accepted (single or in batches)",
                                    registry=self.registry)
        self.posts_in = Counter("popscore_posts_accepted", "Valid posts accepted", registry=self.registry)
        self.sequence_merges = Counter("popscore_sequence_merges", "Snapshot merges into Redis sequences, by outcome",
                                       ["outcome"], registry=self.registry)
        self.counter_decreases = Counter("popscore_counter_decreases",
                                         "Counter decreases seen in merged sequences (kept, not hidden)",
                                         registry=self.registry)
        self.dead_letters = Counter("popscore_dead_letters", "Records sent to the dead-letter topic, by reason",
                                    ["topic", "reason"], registry=self.registry)
        self.batch_size = Histogram("popscore_micro_batch_records", "Records per micro-batch",
                                    buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
                                    registry=self.registry)
        self.redis_seconds = Histogram("popscore_redis_merge_seconds", "Time of one pipelined sequence merge",
                                       registry=self.registry)

    def serve(self, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)
