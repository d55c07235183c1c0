"""The codec measurement builds real record batches: what it counts is what a consumer reads back."""

from __future__ import annotations

import json

import pytest
from aiokafka.record.memory_records import MemoryRecords

from popscore.tools.record_codecs import CODEC_IDS, build_batches, codec_rows, measure_codecs


def prediction_like(n: int) -> list[tuple[bytes, bytes]]:
    return [(f"post-{i}".encode(), json.dumps({"schema": "prediction.v1", "post_id": f"post-{i}", "model": "temporal",
                                               "score": 100.0 + i * 1.37, "interval": [i, 2 * i + 5],
                                               "explanation": {"time_attention": [0.0] * 10 + [0.25] * 4}}).encode())
            for i in range(n)]


@pytest.mark.parametrize("codec", list(CODEC_IDS))
def test_batches_read_back_as_the_records_with_their_codec(codec, monkeypatch):
    records = prediction_like(40)
    built: list[bytes] = []
    import popscore.tools.record_codecs as module

    original = module.DefaultRecordBatchBuilder

    class Keeping(original):  # keep what was built, to read it back
        def build(self):
            data = super().build()
            built.append(bytes(data))
            return data

    monkeypatch.setattr(module, "DefaultRecordBatchBuilder", Keeping)
    size = build_batches(records, codec, per_batch=16)
    assert size == sum(map(len, built)) and len(built) == 3  # 16 + 16 + 8
    back, codecs = [], set()
    for data in built:
        stored = MemoryRecords(data)
        while (batch := stored.next_batch()) is not None:
            codecs.add(batch.compression_type)
            back.extend((record.key, record.value) for record in batch)
    assert back == records and codecs == {CODEC_IDS[codec]}


def test_compression_pays_with_records_per_batch():
    figures = measure_codecs(prediction_like(256), codecs=("none", "zstd"), batch_records=(1, 256), min_seconds=0.01)
    none, zstd = figures["none"], figures["zstd"]
    assert zstd["256"]["bytes_per_record"] < 0.5 * none["256"]["bytes_per_record"]
    assert zstd["1"]["bytes_per_record"] > zstd["256"]["bytes_per_record"]  # a lone record has little to share
    assert all(cell["cpu_us_per_record"] > 0 for cells in figures.values() for cell in cells.values())
    rows = codec_rows({"prediction_codecs": figures})
    assert ["1 per batch:" in rows[0][0], "256 per batch:" in rows[1][0]] == [True, True]
    ratio = zstd["256"]["bytes_per_record"] / none["256"]["bytes_per_record"]
    assert f"({ratio:.2f})" in rows[1][1] and rows[1][2].startswith(f"none {none['256']['bytes_per_record']:,} B")


def test_no_records_is_an_error():
    with pytest.raises(ValueError):
        measure_codecs([])
