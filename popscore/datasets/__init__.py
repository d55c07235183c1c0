"""Adapters from the real data sets in ``../shared/data`` to v1 events, behind one ``load`` call.

``load(name, data_dir, limit)`` returns ``DatasetEvents``: validated posts, a lazily built time-ordered
snapshot stream and a ``ProblemReport`` of every source row that was skipped (and why). Each source
module's docstring documents its mapping. The files are read in place, never copied.
``load_source(name, path, limit)`` reads the same formats from anywhere: a file of the data set, a folder
holding its files, or a folder laid out like ``../shared/data``. A source that is missing, unreadable or in
another format raises ``SourceError`` with a one-line reason.

Core rather than a tool: the adapters only parse public data sets into the contract's records, and both the
trainer and the tools (import, simulator fit) read them. They need pandas (the ``train`` extra), so nothing
on the worker's path imports this package.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Callable

from popscore.datasets import hackernews, reddit, youtube
from popscore.datasets._common import (
    DatasetEvents,
    ProblemReport,
    SourceError,
    SourceMissing,
    event_time,
    merge_in_time_order,
)

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data"
"""``../shared/data`` next to the repository checkout (where the project machine keeps them)."""

Loader = Callable[..., DatasetEvents]

DATASETS: dict[str, Loader] = {
    "hackernews": hackernews.load,
    "reddit": reddit.load,
    **{name: partial(youtube.load, variant=name) for name in youtube.VARIANTS},
}


def _check(name: str, limit: int | None) -> None:
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    if limit is not None and limit < 1:
        raise ValueError("limit must be a positive number of posts")


def load(name: str, data_dir: Path | str | None = None, limit: int | None = None) -> DatasetEvents:
    """Load data set ``name`` (see ``DATASETS``); ``limit`` keeps only the earliest ``limit`` posts."""
    _check(name, limit)
    data_dir = Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR
    if not data_dir.is_dir():
        raise SourceMissing(f"data directory {data_dir} does not exist (pass --data-dir)")
    return DATASETS[name](data_dir, limit=limit, name=name)


def load_source(name: str, source: Path | str, limit: int | None = None) -> DatasetEvents:
    """Load data set ``name`` from ``source``, wherever it is: a file in the adapter's format (Hacker News:
    ``items.csv`` or ``observations.csv`` with the other beside it), a folder holding the adapter's files, or
    a data root laid out like ``../shared/data``. Files may be plain, ``.xz`` or ``.gz``. Raises
    ``SourceError`` (``SourceMissing`` when the path does not exist) with the path and the reason."""
    _check(name, limit)
    source = Path(source)
    if not source.exists():
        raise SourceMissing(f"{source}: no such file or folder")
    if source.is_dir():
        try:
            next(source.iterdir(), None)
        except PermissionError:
            raise SourceError(f"{source}: permission denied") from None
        if (source / _layout_path(name)).parent.is_dir():  # a data root laid out like ../shared/data
            return load(name, source, limit)
    if name == "hackernews":
        items, observations = hackernews.source_files(source)
        return hackernews.load_files(items, observations, limit=limit, name=name)
    if name == "reddit":
        return reddit.load_file(reddit.source_file(source), limit=limit, name=name)
    path = youtube.source_file(source, name)
    return youtube.load_file(path, youtube.VARIANTS[name], limit=limit, name=name,
                             categories=youtube.categories_beside(path, name))


def _layout_path(name: str) -> str:
    """Where data set ``name``'s main file sits under a data root."""
    if name == "hackernews":
        return f"{hackernews.FOLDER}/{hackernews.OBSERVATIONS}"
    if name == "reddit":
        return f"{reddit.FOLDER}/{reddit.FILE}"
    return youtube.VARIANTS[name].path


__all__ = [
    "DATASETS",
    "DEFAULT_DATA_DIR",
    "DatasetEvents",
    "ProblemReport",
    "SourceError",
    "SourceMissing",
    "event_time",
    "load",
    "load_source",
    "merge_in_time_order",
]
