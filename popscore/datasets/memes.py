"""Reddit memes with their pictures, 2016-08 .. 2018-03 (``reddit-memes-2016-2018``): one final upvote count per
post, no time series, so it is not a snapshot stream like the other adapters but a table of posts for the static
image models (``popscore train --dataset reddit-memes``).

Mapping (posts.csv -> v1 ``Post``): ``post_id`` = ``reddit:<id>``, ``platform`` = ``reddit``, ``created_at`` =
``created_utc``, ``author.id`` = ``reddit:<author>`` and ``author.posts`` = the author's posts in this data set created
strictly before this one (only earlier posts: what a scorer could know at upload), ``text.title`` = ``title``,
``media.image_uris`` = [``file://`` URI of the image]. The label ``ups`` (final upvotes) is a column of the
frame, never part of the post.

Skipped and counted (``MemesData.problems``): rows with a malformed id, an unparsable creation time, a missing
or negative upvote count, a repeated id, or an image file that is not there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from popscore.contract import MAX_TITLE_CHARS, Post
from popscore.datasets._common import SourceError, SourceMissing

PLATFORM = "reddit"
FOLDER = "reddit-memes-2016-2018"
FILE = "posts.csv"
ID_PREFIX = "reddit:"
COLUMNS = ("id", "created_utc", "ups", "author", "title", "image")
DELETED_AUTHORS = ("", "[deleted]")  # no identity: never counted as one author's history


@dataclass
class MemesData:
    """The posts (sorted by creation time, ties by id) and what was skipped."""

    frame: pd.DataFrame  # id, post_id, created_at (epoch s), ups, author, title, image_path, author_prior_posts
    posts: list[Post]
    root: Path
    problems: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def image_paths(self) -> list[Path]:
        return [Path(p) for p in self.frame["image_path"]]


def load(data_dir: Path | str, limit: int | None = None) -> MemesData:
    """The data set under ``data_dir/reddit-memes-2016-2018``; ``limit``: only the earliest ``limit`` posts."""
    return load_folder(Path(data_dir) / FOLDER, limit=limit)


def load_folder(root: Path | str, limit: int | None = None) -> MemesData:
    root = Path(root)
    path = root / FILE
    if not path.is_file():
        raise SourceMissing(f"{path}: no such file (the memes data set's table)")
    try:
        rows = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise SourceError(f"{path}: not a readable CSV table: {exc}") from exc
    missing = [c for c in COLUMNS if c not in rows.columns]
    if missing:
        raise SourceError(f"{path}: missing columns {missing}: not the memes data set's posts.csv")
    problems: dict[str, int] = {}

    def drop(bad: pd.Series, reason: str) -> None:
        nonlocal rows
        if bad.any():
            problems[reason] = problems.get(reason, 0) + int(bad.sum())
            rows = rows[~bad]

    drop(~rows["id"].str.fullmatch(r"[a-z0-9]{1,16}"), "mangled_id")
    created = pd.to_numeric(rows["created_utc"], errors="coerce")
    drop(created.isna() | (created <= 0), "unparsable_created")
    ups = pd.to_numeric(rows["ups"], errors="coerce")
    drop(ups.isna() | (ups < 0) | (ups != ups.round()), "bad_ups")
    drop(rows["id"].duplicated(), "repeated_id")
    image_path = rows["image"].map(lambda p: str((root / p).resolve()))
    drop(~image_path.map(lambda p: Path(p).is_file()), "missing_image")

    frame = pd.DataFrame({
        "id": rows["id"].to_numpy(),
        "post_id": (ID_PREFIX + rows["id"]).to_numpy(),
        "created_at": pd.to_numeric(rows["created_utc"]).astype(np.float64).to_numpy(),
        "ups": pd.to_numeric(rows["ups"]).astype(np.int64).to_numpy(),
        "author": rows["author"].to_numpy(),
        "title": rows["title"].str.slice(0, MAX_TITLE_CHARS).to_numpy(),
        "image_path": image_path.loc[rows.index].to_numpy(),
    })
    frame = frame.sort_values(["created_at", "id"], kind="stable").reset_index(drop=True)
    if limit is not None:
        frame = frame.iloc[:limit].reset_index(drop=True)
    frame["author_prior_posts"] = author_prior_posts(frame["author"].to_numpy(), frame["created_at"].to_numpy())
    return MemesData(frame, [post_of(row) for row in frame.itertuples(index=False)], root, problems)


def author_prior_posts(authors: np.ndarray, created_at: np.ndarray) -> np.ndarray:
    """Per post, how many posts of its author were created strictly before it (0 for deleted authors). Posts
    created at the same second do not count each other: neither was known when the other was posted."""
    out = np.zeros(len(authors), np.int64)
    seen: dict[str, list[float]] = {}
    for i in np.argsort(created_at, kind="stable"):
        a = authors[i]
        if a in DELETED_AUTHORS:
            continue
        times = seen.setdefault(a, [])
        out[i] = sum(t < created_at[i] for t in times)
        times.append(created_at[i])
    return out


def post_of(row) -> Post:
    author = (None if row.author in DELETED_AUTHORS
              else {"id": ID_PREFIX + row.author, "posts": int(row.author_prior_posts)})
    return Post.model_validate({
        "post_id": row.post_id,
        "platform": PLATFORM,
        "created_at": pd.Timestamp(row.created_at, unit="s", tz="UTC").to_pydatetime(),
        "author": author,
        "text": {"title": row.title},
        "media": {"image_uris": [Path(row.image_path).as_uri()]},
    })
