"""The canonical on-disk event format: time-ordered JSON Lines of v1 posts and snapshots.

One event per line, exactly the bytes the contract's ``encode_record`` produces, so a file can be replayed
to Kafka unchanged. Posts sit at ``created_at``, snapshots at ``observed_at``; lines are in non-decreasing
event time (a post before its snapshots at a tie). ``.gz`` and ``.xz`` suffixes compress. Writing and
reading stream (bounded memory); every line read is validated by the same ``decode_record`` the workers
use, so a user's own file is checked exactly as Kafka input would be.

Core rather than a tool: the trainer (``popscore evaluate --events``) reads event files as well as the tools
(import, simulate, replay, demo), and the format is the contract's records and nothing else.
"""

from __future__ import annotations

import gzip
import lzma
import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Iterable, Iterator

from popscore.contract import Post, RejectedRecord, Snapshot, decode_record, encode_record

FILE_SCHEMAS = ("post.v1", "snapshot.v1")
ANY_TIME = timedelta(days=365 * 1000)  # files hold history; the future-skew check is for live input


class EventFileError(ValueError):
    """A line of an event file is invalid or out of time order; says which line and why."""

    def __init__(self, path: Path, line_no: int, reason: str, detail: str) -> None:
        super().__init__(f"{path}:{line_no}: {reason}: {detail}")
        self.line_no = line_no
        self.reason = reason


def open_text(path: Path | str, mode: str, suffix: str | None = None) -> IO[str]:
    """Open plain, .gz or .xz text, by ``suffix`` or else the path's own suffix."""
    path = Path(path)
    suffix = suffix or path.suffix
    if suffix == ".gz":
        return gzip.open(path, mode + "t", encoding="utf-8")
    if suffix == ".xz":
        return lzma.open(path, mode + "t", encoding="utf-8")
    return open(path, mode, encoding="utf-8")


def event_time(event: Post | Snapshot) -> datetime:
    return event.created_at if isinstance(event, Post) else event.observed_at


def write(path: Path | str, events: Iterable[Post | Snapshot]) -> int:
    """Write events (which must already be in time order) and return how many were written.

    Out-of-order input raises instead of being re-sorted: sorting would need the whole stream in memory,
    and a producer that emits out of order has a bug worth seeing.
    """
    path = Path(path)
    count = 0
    last: datetime | None = None
    tmp = path.with_name(path.name + ".partial")  # a crash never leaves a truncated file under the real name
    with open_text(tmp, "w", suffix=path.suffix) as out:
        for event in events:
            when = event_time(event)
            if last is not None and when < last:
                raise ValueError(f"event {count + 1} ({event.post_id} at {when.isoformat()}) is earlier than "
                                 f"the previous one ({last.isoformat()}): write needs time-ordered events")
            last = when
            out.write(encode_record(event).decode("utf-8"))
            out.write("\n")
            count += 1
    tmp.replace(path)
    return count


def read(path: Path | str, *, check_order: bool = True) -> Iterator[Post | Snapshot]:
    """Yield each event, validated; the first invalid or out-of-order line raises ``EventFileError``."""
    path = Path(path)
    last: datetime | None = None
    for line_no, event in enumerate(_decoded(path), start=1):
        if isinstance(event, EventFileError):
            raise event
        when = event_time(event)
        if check_order and last is not None and when < last:
            raise EventFileError(path, line_no, "out_of_order", f"{when.isoformat()} after {last.isoformat()}")
        last = when
        yield event


def read_lines(path: Path | str) -> Iterator[tuple[bytes, Post | Snapshot]]:
    """Yield (raw line bytes, validated event): replay sends the bytes, keyed by the event's post_id."""
    path = Path(path)
    last: datetime | None = None
    with open_text(path, "r") as lines:
        for line_no, line in enumerate(lines, start=1):
            raw = line.rstrip("\n").encode("utf-8")
            if not raw.strip():
                continue
            event = _decode(path, line_no, raw)
            when = event_time(event)
            if last is not None and when < last:
                raise EventFileError(path, line_no, "out_of_order", f"{when.isoformat()} after {last.isoformat()}")
            last = when
            yield raw, event


def _decoded(path: Path) -> Iterator[Post | Snapshot | EventFileError]:
    with open_text(path, "r") as lines:
        for line_no, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                yield _decode(path, line_no, line.encode("utf-8"))
            except EventFileError as exc:
                yield exc


def _decode(path: Path, line_no: int, raw: bytes) -> Post | Snapshot:
    try:
        return decode_record(raw, accept=FILE_SCHEMAS, max_future_skew=ANY_TIME)  # type: ignore[return-value]
    except RejectedRecord as exc:
        raise EventFileError(path, line_no, exc.reason.value, exc.detail) from None


@dataclass
class Summary:
    """What ``popscore inspect`` prints: enough to judge a file before replaying or training on it."""

    lines: int = 0
    posts: int = 0
    snapshots: int = 0
    rejected: Counter = field(default_factory=Counter)
    out_of_order: int = 0
    platforms: Counter = field(default_factory=Counter)
    first_time: datetime | None = None
    last_time: datetime | None = None
    counter_min: dict[str, int] = field(default_factory=dict)
    counter_max: dict[str, int] = field(default_factory=dict)
    observations_per_item: dict[str, float] = field(default_factory=dict)
    items_without_snapshots: int = 0
    snapshots_without_post: int = 0
    repeated_posts: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "lines": self.lines,
            "posts": self.posts,
            "snapshots": self.snapshots,
            "rejected": dict(self.rejected),
            "out_of_order": self.out_of_order,
            "platforms": dict(self.platforms),
            "first_time": self.first_time.isoformat() if self.first_time else None,
            "last_time": self.last_time.isoformat() if self.last_time else None,
            "span_hours": self.span_hours,
            "counters": {k: [self.counter_min[k], self.counter_max[k]] for k in sorted(self.counter_max)},
            "observations_per_item": self.observations_per_item,
            "items_without_snapshots": self.items_without_snapshots,
            "snapshots_without_post": self.snapshots_without_post,
            "repeated_posts": self.repeated_posts,
        }

    @property
    def span_hours(self) -> float:
        if self.first_time is None or self.last_time is None:
            return 0.0
        return round((self.last_time - self.first_time).total_seconds() / 3600, 3)

    def render(self) -> str:
        d = self.as_dict()
        out = [
            f"lines {d['lines']}: {d['posts']} posts, {d['snapshots']} snapshots, "
            f"{sum(self.rejected.values())} rejected {d['rejected'] or ''}, {d['out_of_order']} out of time order",
            f"platforms: {d['platforms']}",
            f"time span: {d['first_time']} → {d['last_time']} ({d['span_hours']} h)",
            "observations per item: " + ", ".join(f"{k} {v:g}" for k, v in self.observations_per_item.items()),
            f"items without snapshots {self.items_without_snapshots}, snapshots without a post "
            f"{self.snapshots_without_post}, repeated posts {self.repeated_posts}",
            "counter ranges: " + ", ".join(f"{k} [{lo}, {hi}]" for k, (lo, hi) in d["counters"].items()),
        ]
        return "\n".join(out)


QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)


def summarise(path: Path | str) -> Summary:
    """One streaming pass: counts, time span, counter ranges, observations per item, rejected lines.

    Memory grows with the number of distinct items (one counter each), not with the number of lines.
    """
    path = Path(path)
    summary = Summary()
    per_item: Counter = Counter()
    posted: set[str] = set()
    last: datetime | None = None
    for item in _decoded(path):
        summary.lines += 1
        if isinstance(item, EventFileError):
            summary.rejected[item.reason] += 1
            continue
        when = event_time(item)
        if last is not None and when < last:
            summary.out_of_order += 1
        last = when if last is None or when > last else last
        summary.first_time = when if summary.first_time is None or when < summary.first_time else summary.first_time
        summary.last_time = when if summary.last_time is None or when > summary.last_time else summary.last_time
        if isinstance(item, Post):
            summary.posts += 1
            summary.platforms[item.platform] += 1
            if item.post_id in posted:
                summary.repeated_posts += 1
            posted.add(item.post_id)
        else:
            summary.snapshots += 1
            if item.post_id not in posted:
                summary.snapshots_without_post += 1
            per_item[item.post_id] += 1
            for name, value in item.counts.as_dict().items():
                summary.counter_min[name] = min(summary.counter_min.get(name, value), value)
                summary.counter_max[name] = max(summary.counter_max.get(name, value), value)
    summary.items_without_snapshots = len(posted - per_item.keys())
    counts = sorted(per_item.get(post_id, 0) for post_id in posted | per_item.keys())
    summary.observations_per_item = {f"p{round(q * 100)}": quantile(counts, q) for q in QUANTILES} if counts else {}
    if counts:
        summary.observations_per_item["mean"] = round(sum(counts) / len(counts), 3)
    return summary


def quantile(sorted_values: list[int], q: float) -> float:
    """Linear-interpolated quantile of an already sorted list (numpy's default method)."""
    position = q * (len(sorted_values) - 1)
    lo, hi = math.floor(position), math.ceil(position)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (position - lo)
