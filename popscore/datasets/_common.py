"""Shared pieces of the dataset adapters: the problem report, the loaded-events container, CSV helpers.

Adapters clean a source with vectorised pandas checks, count and drop every row the source got wrong
(``ProblemReport.skipped``), and keep the rest. Facts worth knowing that are not errors (an empty
comment cell meaning "no comments yet", a counter that went down) are counted in ``ProblemReport.notes``
and kept. Posts are validated eagerly (tens of thousands); snapshots, up to about a million, are built
and validated lazily from a cleaned table so loading stays fast.
"""

from __future__ import annotations

import gzip
import heapq
import io
import lzma
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pandas as pd
from pydantic import ValidationError

from popscore.contract import EARLIEST, MAX_COUNTER, MAX_TAGS, Post, Snapshot, describe_validation_error

EXAMPLES_PER_PROBLEM = 3
COMPRESSED_SUFFIXES = ("", ".xz", ".gz")
"""A source file may be plain or compressed: ``items.csv``, ``items.csv.xz`` or ``items.csv.gz``."""


class SourceError(ValueError):
    """A data set's source cannot be read as that data set: unreadable, not CSV, or missing the adapter's
    columns. The message names the path and says what is wrong, in one line (the CLI prints it as is)."""


class SourceMissing(SourceError, FileNotFoundError):
    """The file or folder a data set should be read from does not exist (also a ``FileNotFoundError``,
    which callers that fall back without the data already catch)."""


def find_file(folder: Path, basename: str) -> Path | None:
    """``folder/basename`` as it is, or with any of the compressed suffixes swapped (``.csv`` <-> ``.csv.xz``
    <-> ``.csv.gz``); None if none of them is a file."""
    stem = basename.removesuffix(".xz").removesuffix(".gz")
    for suffix in (basename[len(stem):],) + COMPRESSED_SUFFIXES:
        path = Path(folder) / (stem + suffix)
        if path.is_file():
            return path
    return None


def require_columns(frame: pd.DataFrame, columns: Iterable[str], path: Path, name: str) -> None:
    """Raise ``SourceError`` unless every column the adapter reads is in ``frame`` (a file of another
    format fails here, with what it lacks, instead of deep inside the cleaning)."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        have = ", ".join(list(map(str, frame.columns))[:8]) or "none"
        raise SourceError(f"{path}: not a {name} file: missing column(s) {', '.join(missing)} (has: {have})")


@dataclass
class ProblemReport:
    """How many source rows were read, which were skipped and why, and what was noted but kept."""

    dataset: str
    rows_read: int = 0
    skipped: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, problem: str, count: int, examples: Iterable[object] = ()) -> None:
        if count:
            self.skipped[problem] += int(count)
            self._remember(problem, examples)

    def note(self, what: str, count: int, examples: Iterable[object] = ()) -> None:
        if count:
            self.notes[what] += int(count)
            self._remember(what, examples)

    def _remember(self, key: str, examples: Iterable[object]) -> None:
        kept = self.examples.setdefault(key, [])
        for example in examples:
            if len(kept) >= EXAMPLES_PER_PROBLEM:
                break
            kept.append(str(example))

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def as_dict(self) -> dict[str, object]:
        return {
            "dataset": self.dataset,
            "rows_read": self.rows_read,
            "skipped": dict(self.skipped),
            "notes": dict(self.notes),
            "examples": self.examples,
        }

    def render(self) -> str:
        lines = [f"{self.dataset}: {self.rows_read} source rows read, {self.total_skipped} skipped"]
        for name, count in sorted(self.skipped.items()):
            lines.append(f"  skipped {name}: {count}  e.g. {self.examples.get(name, [])}")
        for name, count in sorted(self.notes.items()):
            lines.append(f"  noted   {name}: {count}  e.g. {self.examples.get(name, [])}")
        return "\n".join(lines)


@dataclass
class DatasetEvents:
    """The v1 events of one data set: validated posts, a cleaned snapshot table, the problem report.

    ``snapshot_table`` has one row per observation: ``post_id``, ``observed_ns`` (int64 UTC epoch ns)
    and one nullable integer column per counter; rows are sorted by time (stable in source order).
    """

    name: str
    platform: str
    posts: list[Post]
    snapshot_table: pd.DataFrame
    problems: ProblemReport

    @property
    def n_snapshots(self) -> int:
        return len(self.snapshot_table)

    def snapshots(self) -> Iterator[Snapshot]:
        """Snapshots in time order, validated one by one as they are built."""
        table = self.snapshot_table
        counters = [c for c in table.columns if c not in ("post_id", "observed_ns")]
        columns = [table["post_id"].to_numpy(), table["observed_ns"].to_numpy()]
        columns += [table[c].to_numpy(dtype=object, na_value=None) for c in counters]
        for post_id, observed_ns, *values in zip(*columns):
            counts = {name: int(v) for name, v in zip(counters, values) if v is not None}
            yield Snapshot.model_validate(
                {"post_id": post_id, "observed_at": ns_to_datetime(observed_ns), "counts": counts}
            )

    def events(self) -> Iterator[Post | Snapshot]:
        """Posts and snapshots interleaved in event-time order (a post before its snapshots at a tie)."""
        return merge_in_time_order(self.posts, self.snapshots())


def event_time(event: Post | Snapshot) -> datetime:
    return event.created_at if isinstance(event, Post) else event.observed_at


def merge_in_time_order(posts: Iterable[Post], snapshots: Iterable[Snapshot]) -> Iterator[Post | Snapshot]:
    """Merge two time-sorted streams; at equal times posts come first so a snapshot never precedes its post."""
    keyed_posts = ((p.created_at, 0, i, p) for i, p in enumerate(posts))
    keyed_snaps = ((s.observed_at, 1, i, s) for i, s in enumerate(snapshots))
    for _, _, _, event in heapq.merge(keyed_posts, keyed_snaps):
        yield event


def ns_to_datetime(ns: int) -> datetime:
    seconds, rest = divmod(int(ns), 1_000_000_000)
    return datetime.fromtimestamp(seconds, tz=timezone.utc).replace(microsecond=rest // 1000)


def read_text(path: Path, encodings: tuple[str, ...] = ("utf-8-sig",)) -> tuple[str, int]:
    """Decode an .xz (or plain) text file line by line, trying each encoding in turn per line.

    Returns the text and how many lines needed a fallback encoding (reported as a note by the caller):
    a re-saved spreadsheet mixes encodings, and decoding it correctly is reading, not fixing.
    """
    if path.suffix == ".xz":
        raw = lzma.open(path).read()
    elif path.suffix == ".gz":
        raw = gzip.open(path).read()
    else:
        raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode(encodings[0]), 0
    except UnicodeDecodeError:
        pass
    lines, fallbacks = [], 0
    for line in raw.split(b"\n"):
        for n, encoding in enumerate(encodings):
            try:
                lines.append(line.decode(encoding))
                fallbacks += n > 0
                break
            except UnicodeDecodeError:
                continue
        else:
            raise UnicodeDecodeError(encodings[-1], line, 0, len(line), f"no encoding of {encodings} fits")
    return "\n".join(lines), fallbacks


def read_csv_text(path: Path, encodings: tuple[str, ...] = ("utf-8-sig",)) -> tuple[pd.DataFrame, int]:
    """Every column as a string, empty cells as "" (so missing values are seen, not guessed).

    A file that is missing, unreadable, badly compressed, not text or not CSV raises ``SourceError`` (or
    ``SourceMissing``) naming it: the user's own files come through here, and a traceback from lzma or
    pandas says less than the path and the reason."""
    path = Path(path)
    try:
        text, fallbacks = read_text(path, encodings)
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise SourceMissing(f"{path}: no such file") from None
    except IsADirectoryError:
        raise SourceError(f"{path}: is a folder, not a file") from None
    except PermissionError:
        raise SourceError(f"{path}: permission denied") from None
    except (OSError, EOFError, lzma.LZMAError, UnicodeDecodeError, pd.errors.ParserError,
            pd.errors.EmptyDataError) as exc:
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise SourceError(f"{path}: cannot be read as CSV text ({reason})") from None
    return frame, fallbacks


def drop_rows(frame: pd.DataFrame, bad: pd.Series, report: ProblemReport, problem: str, show: str) -> pd.DataFrame:
    """Count and drop the rows flagged ``bad``, keeping a few examples of column ``show``."""
    bad = bad.fillna(True).astype(bool)
    report.skip(problem, int(bad.sum()), frame.loc[bad, show].head(EXAMPLES_PER_PROBLEM))
    return frame.loc[~bad]


def parse_counter(frame: pd.DataFrame, column: str, report: ProblemReport, show: str) -> pd.DataFrame:
    """Turn a text counter column into int64, dropping rows where it is missing, not an integer,
    negative or too large for the contract. Each kind of failure is its own problem."""
    values = pd.to_numeric(frame[column], errors="coerce")
    if values.dtype.kind != "i":  # not every cell is a clean integer: find out which ones, and why
        text = frame[column].str.strip()
        frame = drop_rows(frame, text == "", report, f"missing_{column}", show)
        text = text.loc[frame.index]
        frame = drop_rows(frame, text.str.fullmatch(r"-\d+"), report, f"negative_{column}", show)
        text = text.loc[frame.index]
        frame = drop_rows(frame, ~text.str.fullmatch(r"\d+"), report, f"unparsable_{column}", show)
        values = pd.to_numeric(text.loc[frame.index], errors="coerce")
    frame = drop_rows(frame, values < 0, report, f"negative_{column}", show)
    values = values.loc[frame.index]
    frame = drop_rows(frame, values > MAX_COUNTER, report, f"too_large_{column}", show)
    frame = frame.copy()
    frame[column] = values.loc[frame.index].astype("int64")
    return frame


def first_per_post(frame: pd.DataFrame, key: str, columns: list[str], report: ProblemReport) -> pd.DataFrame:
    """The first-seen value of each metadata column per post; posts whose metadata changed are noted."""
    grouped = frame.groupby(key, sort=False)
    for column in columns:
        changed = grouped[column].nunique() > 1
        report.note(f"{column}_changed_between_observations", int(changed.sum()), changed[changed].index[:3])
    return grouped[columns].first()


def split_tags(text: str, sep: str = "|", quoted: bool = False) -> tuple[list[str], bool]:
    """Tags from the source's delimited cell; ``[none]`` means no tags. Returns (tags, truncated)."""
    if text in ("", "[none]"):
        return [], False
    tags = [t.strip() for t in text.split(sep)]
    if quoted:
        tags = [t[1:-1] if len(t) >= 2 and t[0] == t[-1] == '"' else t for t in tags]
    tags = [t for t in tags if t]
    return tags[:MAX_TAGS], len(tags) > MAX_TAGS


def validate_posts(raw_posts: Iterable[dict], report: ProblemReport) -> list[Post]:
    """Validate each post at the boundary; a post the contract rejects is counted and skipped."""
    posts: list[Post] = []
    for raw in raw_posts:
        raw.setdefault("media", {})  # an explicit value skips pydantic's deep copy of the default
        try:
            posts.append(Post.model_validate(raw))
        except ValidationError as exc:
            report.skip("post_rejected_by_contract", 1, [f"{raw.get('post_id')}: {describe_validation_error(exc)}"])
    return posts


def to_ns(seconds: pd.Series) -> np.ndarray:
    return (seconds.astype("int64") * 1_000_000_000).to_numpy()


def finish(name: str, platform: str, posts: list[Post], table: pd.DataFrame, report: ProblemReport) -> DatasetEvents:
    """Sort posts and snapshots by time and drop (counting them) the snapshots of posts that were skipped."""
    posts.sort(key=lambda p: p.created_at)  # stable: source order among equal times
    kept = {p.post_id for p in posts}
    orphan = ~table["post_id"].isin(kept)
    report.skip("snapshot_of_skipped_post", int(orphan.sum()), table.loc[orphan, "post_id"].head(3))
    table = table.loc[~orphan].sort_values("observed_ns", kind="stable").reset_index(drop=True)
    return DatasetEvents(name=name, platform=platform, posts=posts, snapshot_table=table, problems=report)


def earliest(meta: pd.DataFrame, table: pd.DataFrame, limit: int | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keep the ``limit`` earliest-created posts (``meta`` indexed by post_id, column ``created_ns``)
    and their observations: a slice of a data set is its beginning, as a replay would see it."""
    meta = meta.sort_values("created_ns", kind="stable")
    if limit is None:
        return meta, table
    meta = meta.iloc[:limit]
    return meta, table.loc[table["post_id"].isin(meta.index)]


def note_decreases(table: pd.DataFrame, counters: list[str], report: ProblemReport) -> None:
    """Counters that go down between consecutive observations are real (flags, deletions): noted, kept."""
    ordered = table.sort_values(["post_id", "observed_ns"], kind="stable")
    for counter in counters:
        diff = ordered.groupby("post_id", sort=False)[counter].diff()
        down = diff < 0
        report.note(f"{counter}_decreased", int(down.sum()), ordered.loc[down.fillna(False), "post_id"].head(3))


def keep_valid_times(
    frame: pd.DataFrame, times: pd.Series, out: str, report: ProblemReport, problem: str, show: str
) -> pd.DataFrame:
    """Store parsed UTC ``times`` (NaT where unparsable) as int64 ns column ``out``; rows whose time did not
    parse are ``<problem>`` and rows outside the contract's window (before 2005, in the future) are
    ``<problem>_out_of_range``; both are skipped."""
    times = pd.to_datetime(times, utc=True, errors="coerce")
    frame = drop_rows(frame, times.isna(), report, problem, show)
    times = times.loc[frame.index]
    now = pd.Timestamp.now(tz="UTC")
    outside = (times < pd.Timestamp(EARLIEST)) | (times > now)
    frame = drop_rows(frame, outside, report, f"{problem}_out_of_range", show)
    frame = frame.copy()
    frame[out] = times.loc[frame.index].astype("int64").to_numpy()  # ns since the epoch
    return frame


def drop_bad_epoch(
    frame: pd.DataFrame, column: str, report: ProblemReport, problem: str, show: str, out: str
) -> pd.DataFrame:
    """Parse a unix-seconds text column (integers only) into int64 ns column ``out``."""
    seconds = pd.to_numeric(frame[column], errors="coerce")
    if seconds.dtype.kind != "i":  # only plain integers count as unix seconds
        text = frame[column].str.strip()
        seconds = pd.to_numeric(text.where(text.str.fullmatch(r"\d{1,11}")), errors="coerce")
    return keep_valid_times(frame, pd.to_datetime(seconds, unit="s", utc=True), out, report, problem, show)


def is_digits(text: pd.Series) -> pd.Series:
    """True where the cell is a non-negative decimal integer (fast path when the whole column parses)."""
    values = pd.to_numeric(text, errors="coerce")
    if values.dtype.kind == "i":
        return (values >= 0) & ~text.str.startswith("+")
    return text.str.fullmatch(r"\d+").fillna(False)
