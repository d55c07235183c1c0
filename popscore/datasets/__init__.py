"""Adapters from the real data sets in ``../shared/data`` to v1 events, behind one ``load`` call.

``load(name, data_dir, limit)`` returns ``DatasetEvents``: validated posts, a lazily built time-ordered
snapshot stream and a ``ProblemReport`` of every source row that was skipped (and why). Each source
module's docstring documents its mapping. The files are read in place, never copied.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Callable

from popscore.datasets import hackernews, reddit, youtube
from popscore.datasets._common import DatasetEvents, ProblemReport, event_time, merge_in_time_order

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data"
"""``../shared/data`` next to the repository checkout (where the project machine keeps them)."""

Loader = Callable[..., DatasetEvents]

DATASETS: dict[str, Loader] = {
    "hackernews": hackernews.load,
    "reddit": reddit.load,
    **{name: partial(youtube.load, variant=name) for name in youtube.VARIANTS},
}


def load(name: str, data_dir: Path | str | None = None, limit: int | None = None) -> DatasetEvents:
    """Load data set ``name`` (see ``DATASETS``); ``limit`` keeps only the earliest ``limit`` posts."""
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    if limit is not None and limit < 1:
        raise ValueError("limit must be a positive number of posts")
    data_dir = Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data directory {data_dir} does not exist (pass --data-dir)")
    return DATASETS[name](data_dir, limit=limit, name=name)


__all__ = [
    "DATASETS",
    "DEFAULT_DATA_DIR",
    "DatasetEvents",
    "ProblemReport",
    "event_time",
    "load",
    "merge_in_time_order",
]
