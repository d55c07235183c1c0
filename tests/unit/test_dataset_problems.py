"""The adapters on small hand-made files: every kind of bad row is counted and skipped, good rows kept."""

from __future__ import annotations

import lzma
from datetime import datetime, timezone
from pathlib import Path

import pytest

from popscore.datasets import load
from popscore.datasets._common import split_tags


def write_xz(path: Path, text: str, encoding: str = "utf-8") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with lzma.open(path, "wb") as handle:
        handle.write(text.encode(encoding))


@pytest.fixture
def hn_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "hackernews-frontpage-30min-2020-2022"
    write_xz(folder / "items.csv.xz", "\n".join([
        "item_id,title,url,author,first_seen_unix",
        "100,First,https://a.example/x,alice,1600000000",
        "101,Second,item?id=101,_bob,1600000100",
        "10x,Mangled,https://b.example,carol,1600000100",
        "102,Bad time,https://c.example,dave,yesterday",
    ]) + "\n")
    write_xz(folder / "observations.csv.xz", "\n".join([
        "snapshot_unix,commit,rank,item_id,upvotes,comments",
        "1600000000,c1,1,100,5,",        # empty comments: HN's "discuss", i.e. 0
        "1600001800,c2,1,100,9,2",
        "1600001800,c2,2,101,3,1",
        "1600003600,c3,1,100,-1,2",      # negative upvotes
        "1600003600,c3,2,101,,1",        # missing upvotes
        "1600003600,c3,3,1o1,4,1",       # mangled id
        "notatime,c4,1,100,10,3",        # unparsable time
        "1600005400,c5,1,100,12,abc",    # unparsable comments
        "1600005400,c5,2,100,12,4",      # kept: the row above was dropped for its comments
        "1600005400,c5,3,100,13,4",      # repeated (item, time)
        "1600007200,c6,1,999,1,0",       # unknown item
        "1599999000,c0,1,101,1,0",       # before the item's first-seen time
        "1600009000,c7,1,100,11,4",      # a decrease: kept and noted
    ]) + "\n")
    return tmp_path


def test_hackernews_bad_rows_are_counted_and_skipped(hn_dir: Path):
    loaded = load("hackernews", hn_dir)
    skipped = dict(loaded.problems.skipped)
    assert skipped == {
        "item_mangled_id": 1,
        "item_unparsable_time": 1,
        "mangled_id": 1,
        "unparsable_time": 1,
        "negative_upvotes": 1,
        "missing_upvotes": 1,
        "unparsable_comments": 1,
        "repeated_observation": 1,
        "observation_of_unknown_item": 1,
        "observed_before_first_seen": 1,
    }
    assert loaded.problems.rows_read == 13 + 4
    assert loaded.problems.notes["comments_empty_means_zero"] == 1
    assert loaded.problems.notes["likes_decreased"] == 1
    snaps = [(s.post_id, s.counts.likes, s.counts.comments) for s in loaded.snapshots()]
    assert snaps == [("hn:100", 5, 0), ("hn:100", 9, 2), ("hn:101", 3, 1), ("hn:100", 12, 4), ("hn:100", 11, 4)]
    assert [p.post_id for p in loaded.posts] == ["hn:100", "hn:101"]
    bob = loaded.posts[1]
    assert bob.author is not None and bob.author.id == "hn:_bob"
    assert bob.attributes["url"] == "item?id=101"
    assert loaded.posts[0].created_at == datetime.fromtimestamp(1600000000, tz=timezone.utc)


def test_limit_keeps_the_earliest_posts_and_only_their_snapshots(hn_dir: Path):
    loaded = load("hackernews", hn_dir, limit=1)
    assert [p.post_id for p in loaded.posts] == ["hn:100"]
    assert {s.post_id for s in loaded.snapshots()} == {"hn:100"}


def test_youtube_excel_name_errors_and_cp1252(tmp_path: Path):
    folder = tmp_path / "youtube-trending-v2-excel-subset"
    header = "video_id,trending_date,title,category_id,views,likes,dislikes,comment_count\n"
    good = "abcdefghijk,17.14.11,It\u2019s fine,22,100,10,1,5\n"
    excel = "#NAME?,17.14.11,was -abcdefghij,22,100,10,1,5\n"
    cp1252_line = "bcdefghijkl,17.15.11,Won\u2019t break,24,7,1,0,0\n".encode("cp1252")
    later = "abcdefghijk,17.15.11,It\u2019s fine,22,90,11,1,6\n"  # views went down: noted, kept
    folder.mkdir(parents=True)
    with lzma.open(folder / "USvideos.csv.xz", "wb") as handle:
        handle.write((header + good + excel).encode("utf-8") + cp1252_line + later.encode("utf-8"))
    loaded = load("youtube-excel-us", tmp_path)
    assert dict(loaded.problems.skipped) == {"mangled_id": 1}
    assert loaded.problems.notes["lines_decoded_as_cp1252"] == 1
    assert loaded.problems.notes["views_decreased"] == 1
    titles = {p.post_id: p.text.title for p in loaded.posts}
    assert titles == {"yt:abcdefghijk": "It\u2019s fine", "yt:bcdefghijkl": "Won\u2019t break"}
    first = loaded.posts[0]
    # no publish time in this variant: created at the first trending observation (end of that day)
    assert first.created_at == datetime(2017, 11, 14, 23, 59, 59, tzinfo=timezone.utc)
    assert first.attributes["created_at_source"] == "first_seen"
    counts = [s.counts.as_dict() for s in loaded.snapshots() if s.post_id == "yt:abcdefghijk"]
    assert counts == [{"views": 100, "likes": 10, "comments": 5, "dislikes": 1},
                      {"views": 90, "likes": 11, "comments": 6, "dislikes": 1}]


def test_youtube_v2_observed_before_publish_is_skipped(tmp_path: Path):
    folder = tmp_path / "youtube-trending-v2-early-2017"
    header = ("video_id,trending_date,title,channel_title,category_id,publish_time,tags,views,likes,dislikes,"
              "comment_count,thumbnail_link,comments_disabled,ratings_disabled,video_error_or_removed,description\n")
    rows = [
        'abcdefghijk,17.14.11,T,Chan,22,2017-11-13T10:00:00.000Z,"a"|"b",100,10,1,5,https://i.ytimg.com/x.jpg,False,False,False,d\n',
        'bcdefghijkl,17.14.11,T,Chan,22,2017-11-20T10:00:00.000Z,[none],100,10,1,5,https://i.ytimg.com/y.jpg,False,False,False,d\n',
        'cdefghijklm,17.14.11,T,Chan,22,not a time,[none],100,10,1,5,https://i.ytimg.com/z.jpg,False,True,False,d\n',
    ]
    write_xz(folder / "USvideos.csv.xz", header + "".join(rows))
    loaded = load("youtube-v2-us", tmp_path)
    assert dict(loaded.problems.skipped) == {"observed_before_published": 1, "unparsable_publish_time": 1}
    (post,) = loaded.posts
    assert post.text.tags == ["a", "b"]
    assert post.author is not None and post.author.id.startswith("ytch:") and post.author.model_extra["name"] == "Chan"
    assert post.attributes["comments_disabled"] is False


def test_split_tags():
    assert split_tags("[none]") == ([], False)
    assert split_tags('"a b"|"c"', quoted=True) == (["a b", "c"], False)
    tags, cut = split_tags("|".join(f"t{i}" for i in range(70)))
    assert len(tags) == 64 and cut


def test_unknown_dataset_name(tmp_path: Path):
    with pytest.raises(KeyError):
        load("myspace", tmp_path)


def test_cli_dataset_names_match_registry():
    from popscore.datasets import DATASETS
    from popscore.tools.datacli import DATASET_NAMES

    assert sorted(DATASET_NAMES) == sorted(DATASETS)
