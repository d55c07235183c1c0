"""Named points in the worker where a fault test can kill it (SIGKILL, as ``kill -9`` would), at the n-th pass.

The setting ``POPSCORE_WORKER__FAILPOINTS="after_merge=3,before_publish=1"`` kills the worker the 3rd time it
has merged a step into Redis, or the first time it is about to publish predictions. Empty (production), a
failpoint is one dict lookup. The points, in a snapshot's path:
- ``after_merge``: a step's snapshots are in Redis, nothing of it scored or published;
- ``before_publish``: scored, nothing produced;
- ``after_delivery``: predictions in Kafka, the leaderboards and ``predicted_to`` marks not yet written;
- ``awaiting_post``: snapshots whose post has not come are stored and registered as waiting, not yet acked;
- ``media_retry.after_claim``: due media retries taken under their lease (``media_retry.py``), no picture read,
  nothing published or rescheduled.
"""

from __future__ import annotations

import os
import signal


class Failpoints:
    def __init__(self, spec: str = "") -> None:
        self.armed: dict[str, int] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            name, _, nth = item.partition("=")
            self.armed[name] = int(nth or 1)
        self.passes: dict[str, int] = {}

    def hit(self, name: str) -> None:
        if name not in self.armed:
            return
        self.passes[name] = self.passes.get(name, 0) + 1
        if self.passes[name] >= self.armed[name]:
            os.kill(os.getpid(), signal.SIGKILL)
