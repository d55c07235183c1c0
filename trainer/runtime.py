"""What a training or evaluation run takes from the machine (threads) and tells the user (timestamped
lines). Light on purpose: ``popscore evaluate`` uses it without torch."""

from __future__ import annotations

import os
import time


def default_threads() -> int:
    """The cores not busy when the run starts: on a loaded machine, threads beyond the idle cores fight the
    load and each other and make training slower, not faster."""
    cores = os.cpu_count() or 1
    busy = int(round(os.getloadavg()[0])) if hasattr(os, "getloadavg") else 0
    return max(1, min(cores, cores - busy))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)
