"""The built-in sample the demo replays: valid, time-ordered, simulated, small."""

from __future__ import annotations

from pathlib import Path

from popscore import eventfile

SAMPLE = Path(__file__).resolve().parents[2] / "tools" / "sample" / "demo.jsonl"


def test_demo_sample_is_a_valid_event_file():
    summary = eventfile.summarise(SAMPLE)
    assert not summary.rejected and summary.out_of_order == 0
    assert 100 <= summary.posts <= 1000
    assert summary.snapshots_without_post == 0 and summary.items_without_snapshots == 0
    # Hacker News only: the default models in model_repo/ are trained on Hacker News.
    assert set(summary.platforms) == {"hackernews"}
    assert SAMPLE.stat().st_size < 1_000_000
