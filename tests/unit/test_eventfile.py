"""The canonical event file: round trip, compression, order and validation at read, the summary."""

from __future__ import annotations

import gzip
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from popscore import eventfile
from popscore.contract import Post, Snapshot
from popscore.datasets import merge_in_time_order

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


def post(n: int, minutes: int = 0, platform: str = "hackernews") -> Post:
    return Post.model_validate({"post_id": f"p{n}", "platform": platform, "created_at": T0 + timedelta(minutes=minutes),
                                "text": {"title": f"title {n}", "tags": ["x"]}, "attributes": {"k": n}})


def snap(n: int, minutes: int, likes: int, **extra: int) -> Snapshot:
    return Snapshot.model_validate({"post_id": f"p{n}", "observed_at": T0 + timedelta(minutes=minutes),
                                    "counts": {"likes": likes, **extra}})


def sample_events() -> list[Post | Snapshot]:
    posts = [post(1, 0), post(2, 10, "reddit")]
    snaps = [snap(1, 0, 1), snap(1, 30, 5), snap(2, 40, 2, views=9), snap(1, 60, 7)]
    return list(merge_in_time_order(posts, snaps))


def test_merge_puts_a_post_before_its_snapshot_at_the_same_time():
    events = sample_events()
    assert [type(e).__name__ for e in events[:2]] == ["Post", "Snapshot"]
    assert [e.post_id for e in events] == ["p1", "p1", "p2", "p1", "p2", "p1"]


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.xz"])
def test_round_trip(tmp_path: Path, suffix: str):
    path = tmp_path / f"events{suffix}"
    events = sample_events()
    assert eventfile.write(path, events) == len(events)
    assert list(eventfile.read(path)) == events
    assert not list(tmp_path.glob("*.partial"))


def test_gz_file_is_really_compressed(tmp_path: Path):
    path = tmp_path / "events.jsonl.gz"
    eventfile.write(path, sample_events())
    with gzip.open(path, "rt") as handle:
        assert handle.readline().startswith('{"schema":"post.v1"')


def test_write_refuses_out_of_order_events(tmp_path: Path):
    with pytest.raises(ValueError, match="earlier"):
        eventfile.write(tmp_path / "bad.jsonl", [snap(1, 30, 1), snap(1, 0, 1)])
    assert not (tmp_path / "bad.jsonl").exists()


def test_read_reports_the_bad_line(tmp_path: Path):
    path = tmp_path / "events.jsonl"
    eventfile.write(path, sample_events())
    lines = path.read_text().splitlines()
    lines.insert(2, '{"schema":"snapshot.v1","post_id":"p1","observed_at":"2024-01-01T00:20:00Z","counts":{"likes":-1}}')
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(eventfile.EventFileError) as error:
        list(eventfile.read(path))
    assert error.value.line_no == 3 and error.value.reason == "invalid"


def test_read_rejects_out_of_order_lines(tmp_path: Path):
    path = tmp_path / "events.jsonl"
    eventfile.write(path, sample_events())
    lines = path.read_text().splitlines()
    lines[1], lines[3] = lines[3], lines[1]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(eventfile.EventFileError, match="out_of_order"):
        list(eventfile.read(path))
    with pytest.raises(eventfile.EventFileError, match="out_of_order"):
        list(eventfile.read_lines(path))


def test_summarise(tmp_path: Path):
    path = tmp_path / "events.jsonl"
    eventfile.write(path, sample_events() + [post(3, 70)])
    with open(path, "a") as handle:
        handle.write("not json\n")
    summary = eventfile.summarise(path)
    assert (summary.lines, summary.posts, summary.snapshots) == (8, 3, 4)
    assert dict(summary.rejected) == {"not_json": 1}
    assert dict(summary.platforms) == {"hackernews": 2, "reddit": 1}
    assert summary.span_hours == pytest.approx(70 / 60, abs=1e-3)
    assert summary.counter_min == {"likes": 1, "views": 9} and summary.counter_max == {"likes": 7, "views": 9}
    assert summary.items_without_snapshots == 1
    # observations per item: p1 3, p2 1, p3 0
    assert summary.observations_per_item["p50"] == 1 and summary.observations_per_item["p100"] == 3
    assert summary.observations_per_item["mean"] == pytest.approx(4 / 3, abs=1e-3)


def test_quantile_matches_numpy():
    import numpy as np

    values = [0, 1, 1, 2, 5, 8, 13]
    for q in (0, 0.1, 0.5, 0.9, 1):
        assert eventfile.quantile(values, q) == pytest.approx(np.quantile(values, q))
