"""Hacker News front page every ~30 min, 2020-11 → 2022-11 (``hackernews-frontpage-30min-2020-2022``).

Mapping (source → v1):

- post ``post_id`` = ``hn:<item_id>``; ``platform`` = ``hackernews``; ``created_at`` = ``first_seen_unix``
  (the first front-page appearance: the source has no creation time, so ``attributes.created_at_source``
  says ``first_seen``); ``author.id`` = ``hn:<author>`` (HN names may start with ``_``, which a bare v1 id
  may not); ``text.title`` = ``title``; ``attributes``: ``source_id`` (int), ``url`` (verbatim, relative
  ``item?id=`` for Ask/Show HN; left out when longer than the 256-char open-map cap, noted), ``domain``.
- snapshot ``observed_at`` = ``snapshot_unix``; ``counts.likes`` = ``upvotes``; ``counts.comments`` =
  ``comments``, where an empty cell is HN's "discuss" link, i.e. zero comments (documented by the source
  README; mapped to 0 and noted). ``rank`` is a position, not a counter, and snapshot.v1 has no place for
  it, so it is not carried.

Skipped and counted: non-numeric item ids, unparsable times, missing/negative/non-integer upvotes,
non-integer comments, repeated (item, snapshot time) rows, observations of unknown items or before the
item's first-seen time, items with a bad id or time.
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
    is_digits,
    note_decreases,
    ns_to_datetime,
    parse_counter,
    find_file,
    read_csv_text,
    require_columns,
    validate_posts,
)

PLATFORM = "hackernews"
FOLDER = "hackernews-frontpage-30min-2020-2022"
ID_PREFIX = "hn:"
ITEMS, OBSERVATIONS = "items.csv.xz", "observations.csv.xz"
ITEM_COLUMNS = ("item_id", "title", "url", "author", "first_seen_unix")
OBSERVATION_COLUMNS = ("snapshot_unix", "item_id", "upvotes", "comments")


def load(data_dir: Path, limit: int | None = None, name: str = "hackernews") -> DatasetEvents:
    folder = Path(data_dir) / FOLDER
    return load_files(folder / ITEMS, folder / OBSERVATIONS, limit=limit, name=name)


def source_files(source: Path) -> tuple[Path, Path]:
    """(items, observations) of a source given by the user: a folder holding both files (plain, .xz or .gz),
    or either file with the other beside it (the data set is two tables, one file alone is not enough)."""
    folder, given = (source, None) if source.is_dir() else (source.parent, source)
    if given is not None:
        if not given.name.startswith(("items", "observations")):
            raise SourceError(f"{source}: a {PLATFORM} source is items.csv and observations.csv; pass their "
                              "folder or one of them with the other beside it")
    items, obs = find_file(folder, ITEMS), find_file(folder, OBSERVATIONS)
    if items is None or obs is None:
        lacking = " and ".join(n for n, f in (("items.csv", items), ("observations.csv", obs)) if f is None)
        raise SourceError(f"{source}: no {lacking} (plain, .xz or .gz) in {folder}: not a {PLATFORM} folder")
    return (given if given is not None and given.name.startswith("items") else items,
            given if given is not None and given.name.startswith("observations") else obs)


def load_files(items_path: Path, observations_path: Path, limit: int | None = None,
               name: str = "hackernews") -> DatasetEvents:
    """The data set from its two tables (items: one row per story; observations: one per front-page sighting)."""
    report = ProblemReport(dataset=name)
    obs, _ = read_csv_text(observations_path)
    require_columns(obs, OBSERVATION_COLUMNS, observations_path, f"{name} observations")
    items, _ = read_csv_text(items_path)
    require_columns(items, ITEM_COLUMNS, items_path, f"{name} items")
    report.rows_read = len(obs) + len(items)

    items = clean_items(items, report)
    table = clean_observations(obs, report)

    unknown = ~table["post_id"].isin(items.index)
    table = drop_rows(table, unknown, report, "observation_of_unknown_item", "post_id")
    before = table["observed_ns"].to_numpy() < items.loc[table["post_id"], "created_ns"].to_numpy()
    table = drop_rows(table, pd.Series(before, index=table.index), report, "observed_before_first_seen", "post_id")
    unobserved = ~items.index.isin(table["post_id"])
    report.note("item_without_observations", int(unobserved.sum()), items.index[unobserved][:3])

    items, table = earliest(items, table, limit)
    note_decreases(table, ["likes", "comments"], report)
    posts = validate_posts(post_dicts(items, report), report)
    return finish(name, PLATFORM, posts, table, report)


def clean_items(items: pd.DataFrame, report: ProblemReport) -> pd.DataFrame:
    """One row per item, indexed by post_id, with ``created_ns``."""
    items = drop_rows(items, ~is_digits(items["item_id"]), report, "item_mangled_id", "item_id")
    items = drop_bad_epoch(items, "first_seen_unix", report, "item_unparsable_time", "item_id", "created_ns")
    dup = items["item_id"].duplicated(keep="first")
    items = drop_rows(items, dup, report, "item_repeated_id", "item_id")
    items = items.assign(post_id=ID_PREFIX + items["item_id"]).set_index("post_id")
    report.note("empty_title", int((items["title"] == "").sum()), items.index[items["title"] == ""][:3])
    return items


def clean_observations(obs: pd.DataFrame, report: ProblemReport) -> pd.DataFrame:
    """Observation rows as ``post_id, observed_ns, likes, comments`` after the per-row checks."""
    obs = drop_rows(obs, ~is_digits(obs["item_id"]), report, "mangled_id", "item_id")
    obs = drop_bad_epoch(obs, "snapshot_unix", report, "unparsable_time", "item_id", "observed_ns")
    obs = parse_counter(obs, "upvotes", report, "item_id")
    discuss = obs["comments"].str.strip() == ""
    report.note("comments_empty_means_zero", int(discuss.sum()), obs.loc[discuss, "item_id"].head(3))
    obs = obs.assign(comments=obs["comments"].mask(discuss, "0"))
    obs = parse_counter(obs, "comments", report, "item_id")
    dup = obs.duplicated(["item_id", "observed_ns"], keep="first")
    obs = drop_rows(obs, dup, report, "repeated_observation", "item_id")
    return pd.DataFrame(
        {
            "post_id": ID_PREFIX + obs["item_id"],
            "observed_ns": obs["observed_ns"],
            "likes": obs["upvotes"].astype("Int64"),
            "comments": obs["comments"].astype("Int64"),
        }
    )


def post_dicts(items: pd.DataFrame, report: ProblemReport):
    long_urls = 0
    for post_id, row in zip(items.index, items.itertuples(index=False)):
        attributes: dict[str, object] = {"source_id": int(row.item_id), "created_at_source": "first_seen"}
        if len(row.url) <= MAX_OPEN_STR_CHARS:
            attributes["url"] = row.url
        else:
            long_urls += 1
        domain = urlsplit(row.url).netloc
        if domain:
            attributes["domain"] = domain[:MAX_OPEN_STR_CHARS]
        yield {
            "post_id": post_id,
            "platform": PLATFORM,
            "created_at": ns_to_datetime(row.created_ns),
            "author": {"id": ID_PREFIX + row.author} if row.author else None,
            "text": {"title": row.title},
            "attributes": attributes,
        }
    report.note("url_longer_than_open_map_cap_left_out", long_urls)
