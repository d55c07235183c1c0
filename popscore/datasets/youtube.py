"""YouTube daily trending lists (Kaggle datasnaek, 2017), five variants of three schemas.

Variants: ``youtube-v1-us`` (v1 schema, no publish time), ``youtube-v2-us`` / ``youtube-v2-fr`` (v2 with
``publish_time``, description, flags), ``youtube-excel-us`` / ``youtube-excel-in`` (8-column subset that
went through Excel: ``-``-leading ids became ``#NAME?``, the US file is partly cp1252).

Mapping (source → v1):

- post ``post_id`` = ``yt:<video_id>`` (a bare id may start with ``-``, which a v1 id may not);
  ``platform`` = ``youtube``; ``created_at`` = ``publish_time`` (v2) or else the first trending
  observation (``attributes.created_at_source`` says which); ``author`` = the channel:
  ``id`` = ``ytch:`` + first 16 hex of sha1(channel_title) (the source has only the display name),
  ``name`` = ``channel_title``; ``text.title``, ``text.description`` (verbatim, escapes kept),
  ``text.tags`` (``|``-separated, quotes removed, ``[none]`` = none; more than 64 tags are cut to the
  contract's 64 and noted); ``media.image_uris`` = [``thumbnail_link``]; ``attributes``: ``source_id``,
  ``region``, ``category_id`` (int), ``category`` (name from ``US_category_id.json``), and in v2
  ``comments_disabled``, ``ratings_disabled``, ``video_error_or_removed`` (bools).
  Metadata is taken from the video's first observation; later changes (retitled videos) are noted.
- snapshot ``observed_at`` = the trending day at 23:59:59 UTC: the list for day D was fetched at an
  unknown time during D, so the end of the day is the one choice never earlier than a publish time;
  ``counts``: ``views``, ``likes``, ``comments`` (= ``comment_total``/``comment_count``) and the extra
  counter ``dislikes``.

Skipped and counted: mangled ids (``#NAME?``, wrong length), unparsable dates or publish times,
missing/negative/non-integer counters, repeated (video, day) rows (v1 has a few days scraped twice
with different numbers: the first row is kept), observations before the publish time.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pandas as pd

from popscore.contract import MAX_OPEN_STR_CHARS
from popscore.datasets._common import (
    DatasetEvents,
    ProblemReport,
    SourceError,
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
    split_tags,
    validate_posts,
)

PLATFORM = "youtube"
ID_PREFIX = "yt:"
CHANNEL_PREFIX = "ytch:"
VIDEO_ID = r"[A-Za-z0-9_\-]{11}"
END_OF_DAY = pd.Timedelta(hours=23, minutes=59, seconds=59)
CATEGORY_FILE = "youtube-trending-v2-early-2017/US_category_id.json"
FLAGS = ("comments_disabled", "ratings_disabled", "video_error_or_removed")


@dataclass(frozen=True)
class Variant:
    path: str
    region: str
    schema: str  # "v1", "v2" or "excel"
    encodings: tuple[str, ...] = ("utf-8-sig",)

    @property
    def comment_column(self) -> str:
        return "comment_total" if self.schema == "v1" else "comment_count"

    @property
    def date_column(self) -> str:
        return "date" if self.schema == "v1" else "trending_date"

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns the adapter reads from a file of this schema."""
        base = ("video_id", self.date_column, "title", "views", "likes", "dislikes", self.comment_column)
        return base + {"v1": ("tags",), "v2": ("publish_time", "tags", "description"), "excel": ()}[self.schema]


VARIANTS: dict[str, Variant] = {
    "youtube-v1-us": Variant("youtube-trending-v1-2017-us/USvideos.csv.xz", "US", "v1"),
    "youtube-v2-us": Variant("youtube-trending-v2-early-2017/USvideos.csv.xz", "US", "v2"),
    "youtube-v2-fr": Variant("youtube-trending-v2-early-2017/FRvideos.csv.xz", "FR", "v2"),
    "youtube-excel-us": Variant("youtube-trending-v2-excel-subset/USvideos.csv.xz", "US", "excel", ("utf-8", "cp1252")),
    "youtube-excel-in": Variant("youtube-trending-v2-excel-subset/INvideos.csv.xz", "IN", "excel", ("utf-8", "cp1252")),
}


def load(data_dir: Path, limit: int | None = None, name: str = "youtube-v2-us", variant: str | None = None) -> DatasetEvents:
    spec = VARIANTS[variant or name]
    return load_file(Path(data_dir) / spec.path, spec, limit=limit, name=name,
                     categories=category_names(Path(data_dir)))


def source_file(source: Path, variant: str) -> Path:
    """The table of a source given by the user: the file itself, or the variant's file (``USvideos.csv``,
    plain, .xz or .gz) in a folder."""
    if not source.is_dir():
        return source
    basename = Path(VARIANTS[variant].path).name
    found = find_file(source, basename)
    if found is None:
        raise SourceError(f"{source}: no {basename.removesuffix('.xz')}[.xz|.gz] in this folder: not a {variant} "
                          "folder (or pass the file itself)")
    return found


def categories_beside(path: Path, variant: str) -> dict[int, str]:
    """Category names from a ``<REGION>_category_id.json`` (or the US one; ids are global) next to a user's
    file, or else from where the shared layout keeps it when the file sits in that layout."""
    candidates = [Path(path).parent / f"{region}_category_id.json" for region in (VARIANTS[variant].region, "US")]
    for found in [*candidates, Path(path).parent.parent / CATEGORY_FILE]:
        if found.is_file():
            try:
                items = json.loads(found.read_text(encoding="utf-8"))["items"]
                return {int(item["id"]): item["snippet"]["title"] for item in items}
            except (OSError, ValueError, KeyError, TypeError):
                return {}  # names are a nicety: a file we cannot read just leaves them out
    return {}


def load_file(path: Path, spec: Variant, limit: int | None = None, name: str = "youtube-v2-us",
              categories: dict[int, str] | None = None) -> DatasetEvents:
    """The data set from one trending table of ``spec``'s schema; ``categories`` maps category ids to names."""
    report = ProblemReport(dataset=name)
    rows, fallbacks = read_csv_text(path, spec.encodings)
    require_columns(rows, spec.columns, path, name)
    report.rows_read = len(rows)
    report.note("lines_decoded_as_cp1252", fallbacks)

    rows = drop_rows(rows, ~rows["video_id"].str.fullmatch(VIDEO_ID), report, "mangled_id", "video_id")
    rows = keep_valid_times(rows, trending_day_end(rows[spec.date_column], spec), "observed_ns", report,
                            "unparsable_time", "video_id")
    for column in ("views", "likes", "dislikes", spec.comment_column):
        rows = parse_counter(rows, column, report, "video_id")
    rows = drop_rows(rows, rows.duplicated(["video_id", "observed_ns"]), report, "repeated_observation", "video_id")
    rows = rows.assign(post_id=ID_PREFIX + rows["video_id"])
    if spec.schema == "v2":
        published = pd.to_datetime(rows["publish_time"], format="%Y-%m-%dT%H:%M:%S.%fZ", utc=True, errors="coerce")
        rows = keep_valid_times(rows, published, "created_ns", report, "unparsable_publish_time", "video_id")
        before = rows["observed_ns"] < rows["created_ns"]
        rows = drop_rows(rows, before, report, "observed_before_published", "video_id")
    else:
        rows = rows.assign(created_ns=rows.groupby("post_id")["observed_ns"].transform("min"))

    metadata = [c for c in rows.columns if c not in ("post_id", "video_id", "observed_ns", spec.date_column,
                                                     "views", "likes", "dislikes", spec.comment_column)]
    meta = first_per_post(rows, "post_id", metadata, report)
    table = pd.DataFrame(
        {
            "post_id": rows["post_id"],
            "observed_ns": rows["observed_ns"],
            "views": rows["views"].astype("Int64"),
            "likes": rows["likes"].astype("Int64"),
            "comments": rows[spec.comment_column].astype("Int64"),
            "dislikes": rows["dislikes"].astype("Int64"),
        }
    )
    meta, table = earliest(meta, table, limit)
    note_decreases(table, ["views", "likes", "comments", "dislikes"], report)
    categories = categories or {}
    posts = validate_posts((post_dict(pid, row, spec, categories, report) for pid, row in meta.iterrows()), report)
    return finish(name, PLATFORM, posts, table, report)


def trending_day_end(dates: pd.Series, spec: Variant) -> pd.Series:
    """The trending day as the last second of that UTC day (v1 ``DD.MM`` is in 2017, others ``YY.DD.MM``)."""
    if spec.schema == "v1":
        days = pd.to_datetime("2017." + dates, format="%Y.%d.%m", utc=True, errors="coerce")
    else:
        days = pd.to_datetime(dates, format="%y.%d.%m", utc=True, errors="coerce")
    return days + END_OF_DAY


@lru_cache(maxsize=4)
def category_names(data_dir: Path) -> dict[int, str]:
    """YouTube category id → name, from the US list that ships with the v2 data (ids are global)."""
    path = data_dir / CATEGORY_FILE
    if not path.exists():
        return {}
    items = json.loads(path.read_text(encoding="utf-8"))["items"]
    return {int(item["id"]): item["snippet"]["title"] for item in items}


def channel_id(channel_title: str) -> str:
    return CHANNEL_PREFIX + hashlib.sha1(channel_title.encode("utf-8")).hexdigest()[:16]


def post_dict(post_id: str, row: pd.Series, spec: Variant, categories: dict[int, str], report: ProblemReport) -> dict:
    attributes: dict[str, object] = {
        "source_id": post_id.removeprefix(ID_PREFIX),
        "region": spec.region,
        "created_at_source": "publish_time" if spec.schema == "v2" else "first_seen",
    }
    category = row.get("category_id", "")
    if isinstance(category, str) and category.isdigit():
        attributes["category_id"] = int(category)
        if int(category) in categories:
            attributes["category"] = categories[int(category)]
    for flag in FLAGS:
        if row.get(flag) in ("True", "False"):
            attributes[flag] = row[flag] == "True"
    text: dict[str, object] = {"title": row["title"]}
    if spec.schema != "excel":
        tags, truncated = split_tags(row["tags"], quoted=spec.schema == "v2")
        report.note("tags_cut_to_contract_cap", int(truncated), [post_id] if truncated else [])
        text["tags"] = tags
    if spec.schema == "v2":
        text["description"] = row["description"]
    post: dict[str, object] = {
        "post_id": post_id,
        "platform": PLATFORM,
        "created_at": ns_to_datetime(row["created_ns"]),
        "text": text,
        "attributes": attributes,
    }
    channel = row.get("channel_title", "")
    if isinstance(channel, str) and channel:
        post["author"] = {"id": channel_id(channel), "name": channel[:MAX_OPEN_STR_CHARS]}
    thumbnail = row.get("thumbnail_link", "")
    if isinstance(thumbnail, str) and thumbnail.startswith(("http://", "https://")):
        post["media"] = {"image_uris": [thumbnail]}
    return post
