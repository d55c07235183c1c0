"""What compressing the worker's record batches saves and costs, on records the worker produced: bytes per record
as the broker stores them and the producer's CPU per record, per codec and records per batch.

Batches are built with aiokafka's record-batch builder (``DefaultRecordBatchBuilder``, what its producer runs for
every batch; aiokafka is pinned), so the bytes are the broker's and the CPU is the worker's. The ratio of a codec
depends on how many records share a batch: the worker sends one batch per partition per micro-batch, a few
records when idle and hundreds under load.
"""

from __future__ import annotations

import time
from typing import Sequence

from aiokafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

CODEC_IDS = {"none": 0, "gzip": DefaultRecordBatch.CODEC_GZIP, "snappy": DefaultRecordBatch.CODEC_SNAPPY,
             "lz4": DefaultRecordBatch.CODEC_LZ4, "zstd": DefaultRecordBatch.CODEC_ZSTD}
"""``kafka.producer_compression``'s values -> the codec id in a record batch's attributes."""
BATCH_RECORDS = (1, 16, 256)
"""Records per batch measured: a lone record (an idle worker), a few, and a loaded worker's batches."""
LOADED_BATCH_RECORDS = 256
"""The batch size whose bytes stand for a loaded worker's (the capacity model's ``prediction_bytes``)."""


def build_batches(records: Sequence[tuple[bytes, bytes]], codec: str, per_batch: int) -> int:
    """Bytes of ``records`` built into batches of ``per_batch`` records compressed with ``codec``."""
    total = 0
    for start in range(0, len(records), per_batch):
        builder = DefaultRecordBatchBuilder(magic=2, compression_type=CODEC_IDS[codec], is_transactional=0,
                                            producer_id=-1, producer_epoch=-1, base_sequence=-1,
                                            batch_size=1 << 30)
        for offset, (key, value) in enumerate(records[start:start + per_batch]):
            builder.append(offset, timestamp=None, key=key, value=value, headers=[])
        total += len(builder.build())
    return total


def measure_codecs(records: Sequence[tuple[bytes, bytes]], codecs: Sequence[str] = tuple(CODEC_IDS),
                   batch_records: Sequence[int] = BATCH_RECORDS, min_seconds: float = 0.2) -> dict:
    """{codec: {records per batch: {"bytes_per_record", "cpu_us_per_record"}}}; each cell is built again until
    ``min_seconds`` of CPU have passed, so the time of a lone small cell is not one timer tick."""
    if not records:
        raise ValueError("no records to measure")
    figures: dict = {}
    for codec in codecs:
        for per_batch in batch_records:
            rounds, started = 0, time.process_time()
            while True:
                size = build_batches(records, codec, per_batch)
                rounds += 1
                if time.process_time() - started >= min_seconds:
                    break
            cpu_s = time.process_time() - started
            figures.setdefault(codec, {})[str(per_batch)] = {
                "bytes_per_record": round(size / len(records), 1),
                "cpu_us_per_record": round(1e6 * cpu_s / (rounds * len(records)), 2)}
    return figures


def codec_rows(results: dict) -> list[tuple[str, str, str]]:
    """The bench table's rows: each codec against ``none`` (no compression) at each batch size."""
    codecs = results.get("prediction_codecs")
    if not codecs or "none" not in codecs:
        return []
    none, n = codecs["none"], results.get("prediction_codec_records")
    rows = []
    for per_batch, plain in none.items():
        cells = [f"{codec} {cells[per_batch]['bytes_per_record']:,} B "
                 f"({cells[per_batch]['bytes_per_record'] / plain['bytes_per_record']:.2f}), "
                 f"{cells[per_batch]['cpu_us_per_record']} us"
                 for codec, cells in codecs.items() if codec != "none"]
        rows.append((f"prediction records on the broker ({f'{n:,}' if n else '?'} of the "
                     f"packaged sample's), {per_batch} per batch: bytes per record (share of uncompressed), "
                     f"producer CPU per record",
                     "; ".join(cells),
                     f"none {plain['bytes_per_record']:,} B, {plain['cpu_us_per_record']} us"))
    return rows
