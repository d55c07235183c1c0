"""Adapters against the real files in ../shared/data: counts and mappings checked against the source rows,
read independently here with the csv module (not the adapters' pandas code)."""

from __future__ import annotations

import csv
import io
import lzma
from collections import defaultdict
from datetime import datetime, timezone

import pytest

from popscore.contract import Post, Snapshot
from popscore.datasets import load

pytestmark = pytest.mark.data


def raw_rows(path, encoding="utf-8-sig"):
    with lzma.open(path, "rt", encoding=encoding, newline="") as handle:
        yield from csv.DictReader(handle)


def utc(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


def assert_time_ordered_posts_first(events) -> None:
    seen_posts: set[str] = set()
    last = None
    for event in events:
        when = event.created_at if isinstance(event, Post) else event.observed_at
        assert last is None or when >= last
        last = when
        if isinstance(event, Post):
            seen_posts.add(event.post_id)
        else:
            assert event.post_id in seen_posts, f"snapshot of {event.post_id} before its post"


@pytest.fixture(scope="module")
def hn(shared_data):
    return load("hackernews", shared_data, limit=300)


def test_hackernews_slice_matches_source_rows(hn, shared_data):
    folder = shared_data / "hackernews-frontpage-30min-2020-2022"
    assert len(hn.posts) == 300
    items = {row["item_id"]: row for row in raw_rows(folder / "items.csv.xz")}
    wanted = {p.post_id.removeprefix("hn:") for p in hn.posts}
    source = defaultdict(list)
    for row in raw_rows(folder / "observations.csv.xz"):
        if row["item_id"] in wanted:
            source[row["item_id"]].append(
                (utc(int(row["snapshot_unix"])), int(row["upvotes"]), int(row["comments"] or 0)))
    loaded = defaultdict(list)
    for snap in hn.snapshots():
        loaded[snap.post_id.removeprefix("hn:")].append(
            (snap.observed_at, snap.counts.likes, snap.counts.comments))
    assert sum(map(len, loaded.values())) == sum(map(len, source.values())) == hn.n_snapshots
    for item_id in wanted:
        assert sorted(loaded[item_id]) == sorted(source[item_id])
    for post in hn.posts:
        row = items[post.post_id.removeprefix("hn:")]
        assert post.platform == "hackernews"
        assert post.text.title == row["title"]
        assert post.author is not None and post.author.id == "hn:" + row["author"]
        assert post.created_at == utc(int(row["first_seen_unix"]))
        assert post.attributes["source_id"] == int(row["item_id"])
        assert post.attributes.get("url", row["url"]) == row["url"]


def test_hackernews_report_counts_every_row(hn):
    report = hn.problems
    assert report.rows_read == 933_728 + 66_197
    assert report.total_skipped == 0  # this source is clean; the synthetic tests cover the skips
    assert report.notes["comments_empty_means_zero"] == 91_779  # the README's "discuss" count


def test_hackernews_events_are_time_ordered(hn):
    assert_time_ordered_posts_first(hn.events())


def test_reddit_counts_and_mapping(shared_data):
    loaded = load("reddit", shared_data)
    rows = list(raw_rows(shared_data / "reddit-rall-hourly-2023" / "core_data_2023.csv.xz"))
    assert len(loaded.posts) == len({r["id"] for r in rows}) == 802
    assert loaded.n_snapshots == len(rows) == 4106
    by_id = defaultdict(list)
    for row in rows:
        by_id[row["id"]].append(row)
    snaps = defaultdict(list)
    for snap in loaded.snapshots():
        snaps[snap.post_id].append(snap)
    for post in loaded.posts[:50]:
        source = by_id[post.post_id.removeprefix("reddit:")]
        assert post.created_at == utc(int(source[0]["created"]))
        assert post.text.title == source[0]["title"]
        assert post.attributes["subreddit"] == source[0]["subreddit_display_name"]
        got = sorted((s.observed_at, s.counts.likes, s.counts.comments) for s in snaps[post.post_id])
        want = sorted((datetime.strptime(r["date"], "%Y-%m-%dT%H").replace(tzinfo=timezone.utc),
                       int(r["score"]), int(r["num_comments"])) for r in source)
        assert got == want
    assert_time_ordered_posts_first(loaded.events())


@pytest.mark.parametrize(
    "name, rows, skipped",
    [
        ("youtube-v1-us", 8000, {"mangled_id": 1, "repeated_observation": 7}),
        ("youtube-v2-us", 3000, {}),
        ("youtube-v2-fr", 3398, {}),
        ("youtube-excel-us", 14999, {"mangled_id": 143}),  # the README's #NAME? count
        ("youtube-excel-in", 14999, {"mangled_id": 188, "repeated_observation": 198}),
    ],
)
def test_youtube_variants_count_rows_and_skips(shared_data, name, rows, skipped):
    loaded = load(name, shared_data)
    assert loaded.problems.rows_read == rows
    assert dict(loaded.problems.skipped) == skipped
    assert loaded.n_snapshots == rows - sum(skipped.values())
    assert all(p.platform == "youtube" and p.post_id.startswith("yt:") for p in loaded.posts)
    assert_time_ordered_posts_first(loaded.events())


def test_youtube_v2_mapping_against_source(shared_data):
    loaded = load("youtube-v2-us", shared_data)
    rows = [r for r in raw_rows(shared_data / "youtube-trending-v2-early-2017" / "USvideos.csv.xz")
            if r["video_id"] == "2kyS6SvSYSE"]
    post = next(p for p in loaded.posts if p.post_id == "yt:2kyS6SvSYSE")
    first = rows[0]
    assert post.created_at == datetime(2017, 11, 13, 17, 13, 1, tzinfo=timezone.utc)
    assert post.text.title == first["title"]
    assert post.text.tags == ["SHANtell martin"]
    assert post.author is not None and post.author.model_extra["name"] == "CaseyNeistat"
    assert post.attributes["category"] == "People & Blogs" and post.attributes["category_id"] == 22
    assert post.media.image_uris == [first["thumbnail_link"]]
    snaps = [s for s in loaded.snapshots() if s.post_id == "yt:2kyS6SvSYSE"]
    assert len(snaps) == len(rows)
    for snap, row in zip(snaps, rows):  # both in trending-day order
        assert snap.counts.views == int(row["views"]) and snap.counts.likes == int(row["likes"])
        assert snap.counts.comments == int(row["comment_count"])
        assert snap.counts.model_extra["dislikes"] == int(row["dislikes"])
        day = datetime.strptime(row["trending_date"], "%y.%d.%m")
        assert snap.observed_at == day.replace(hour=23, minute=59, second=59, tzinfo=timezone.utc)
    assert isinstance(snaps[0], Snapshot)


def test_excel_us_reads_cp1252_lines(shared_data):
    loaded = load("youtube-excel-us", shared_data)
    assert loaded.problems.notes["lines_decoded_as_cp1252"] > 0
    titles = [p.text.title for p in loaded.posts if "robots" in p.text.title]
    assert any("won\u2019t" in t for t in titles)  # 0x92 in cp1252 is a right single quote
