"""Reddit r/all top-100 every hour, 2023-12-30T07 → 2023-12-31T23 (``reddit-rall-hourly-2023``).

Mapping (source → v1):

- post ``post_id`` = ``reddit:<id>``; ``platform`` = ``reddit``; ``created_at`` = ``created`` (unix);
  no ``author`` (the source has none); ``text.title`` = ``title``; ``media.image_uris`` = [``url``] when
  it points at an image (i.redd.it or an image file), ``media.video_uri`` = ``url`` for v.redd.it;
  ``attributes``: ``source_id``, ``subreddit``, ``subreddit_id``, ``category`` (= subreddit, the
  cross-platform category key), ``is_self`` (bool), ``url`` (when ≤ 256 chars), ``domain``.
- snapshot ``observed_at`` = ``date`` (collection hour, ``YYYY-MM-DDTHH``, UTC); ``counts.likes`` =
  ``score`` (net upvotes), ``counts.comments`` = ``num_comments``. ``position`` and ``upvote_ratio`` are
  per-observation but not counters; snapshot.v1 has no place for them, so they are not carried.

Skipped and counted: malformed ids, unparsable hours or creation times, missing/negative/non-integer
score or comments, repeated (id, hour) rows, observations before the post's creation time.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pandas as pd

from popscore.contract import MAX_OPEN_STR_CHARS
from popscore.datasets._common import (
    DatasetEvents,
    ProblemReport,
    SourceError,
    drop_bad_epoch,
    drop_rows,
    earliest,
    finish,
    first_per_post,
    keep_valid_times,
    note_decreases,
    ns_to_datetime,
    parse_counter,
    find_file,
    read_csv_text,
    require_columns,
    validate_posts,
)

PLATFORM = "reddit"
FOLDER = "reddit-rall-hourly-2023"
FILE = "core_data_2023.csv.xz"
ID_PREFIX = "reddit:"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp")
METADATA = ["title", "subreddit_display_name", "subreddit_id", "is_self", "url", "created_ns"]
COLUMNS = ("id", "date", "created", "score", "num_comments", "title", "subreddit_display_name", "subreddit_id",
           "is_self", "url")


def load(data_dir: Path, limit: int | None = None, name: str = "reddit") -> DatasetEvents:
    return load_file(Path(data_dir) / FOLDER / FILE, limit=limit, name=name)


def source_file(source: Path) -> Path:
    """The table of a source given by the user: the file itself, or the one CSV (plain, .xz, .gz) of a
    folder (``core_data_2023.csv`` preferred)."""
    if not source.is_dir():
        return source
    found = find_file(source, FILE)
    if found is None:
        tables = sorted(p for p in source.iterdir() if p.is_file() and ".csv" in p.suffixes)
        if len(tables) != 1:
            raise SourceError(f"{source}: expected {FILE.removesuffix('.xz')}[.xz] or a single CSV file in this "
                              f"folder, found {len(tables)}: not a {PLATFORM} folder")
        found = tables[0]
    return found


def load_file(path: Path, limit: int | None = None, name: str = "reddit") -> DatasetEvents:
    """The data set from its one table (one row per post and collection hour)."""
    report = ProblemReport(dataset=name)
    rows, _ = read_csv_text(path)
    require_columns(rows, COLUMNS, path, name)
    report.rows_read = len(rows)

    rows = drop_rows(rows, ~rows["id"].str.fullmatch(r"[a-z0-9]{1,16}"), report, "mangled_id", "id")
    hours = pd.to_datetime(rows["date"], format="%Y-%m-%dT%H", utc=True, errors="coerce")
    rows = keep_valid_times(rows, hours, "observed_ns", report, "unparsable_time", "id")
    rows = drop_bad_epoch(rows, "created", report, "unparsable_created", "id", "created_ns")
    rows = parse_counter(rows, "score", report, "id")
    rows = parse_counter(rows, "num_comments", report, "id")
    rows = drop_rows(rows, rows.duplicated(["id", "observed_ns"]), report, "repeated_observation", "id")
    rows = drop_rows(rows, rows["observed_ns"] < rows["created_ns"], report, "observed_before_created", "id")
    rows = rows.assign(post_id=ID_PREFIX + rows["id"])

    meta = first_per_post(rows, "post_id", METADATA, report)
    table = pd.DataFrame(
        {
            "post_id": rows["post_id"],
            "observed_ns": rows["observed_ns"],
            "likes": rows["score"].astype("Int64"),
            "comments": rows["num_comments"].astype("Int64"),
        }
    )
    meta, table = earliest(meta, table, limit)
    note_decreases(table, ["likes", "comments"], report)
    posts = validate_posts((post_dict(post_id, row) for post_id, row in meta.iterrows()), report)
    return finish(name, PLATFORM, posts, table, report)


def post_dict(post_id: str, row: pd.Series) -> dict:
    url = row["url"]
    attributes: dict[str, object] = {
        "source_id": post_id.removeprefix(ID_PREFIX),
        "subreddit": row["subreddit_display_name"],
        "subreddit_id": row["subreddit_id"],
        "category": row["subreddit_display_name"],
    }
    if row["is_self"] in ("0", "1"):
        attributes["is_self"] = row["is_self"] == "1"
    if url and len(url) <= MAX_OPEN_STR_CHARS:
        attributes["url"] = url
    domain = urlsplit(url).netloc
    if domain:
        attributes["domain"] = domain
    return {
        "post_id": post_id,
        "platform": PLATFORM,
        "created_at": ns_to_datetime(row["created_ns"]),
        "text": {"title": row["title"]},
        "media": media_of(url),
        "attributes": attributes,
    }


def media_of(url: str) -> dict:
    """A link to an image or a Reddit-hosted video is the post's media; any other link is not."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return {}
    if parts.netloc == "v.redd.it":
        return {"video_uri": url}
    if parts.netloc == "i.redd.it" or parts.path.lower().endswith(IMAGE_SUFFIXES):
        return {"image_uris": [url]}
    return {}
