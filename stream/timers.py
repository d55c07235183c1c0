"""The worker's timers: they run only once the worker has started, and never raise into Faust (a timer's exception
would stop the app): a failed run is logged and counted, and the next tick tries again."""

from __future__ import annotations

import asyncio
import logging

import faust

from popscore.stream.worker import StreamWorker

log = logging.getLogger(__name__)


def timer(app: faust.App, worker: StreamWorker, interval: float):
    def register(task):
        async def run() -> None:
            if not worker.ready:
                return
            try:
                await task()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                worker.metrics.background_errors.labels(task.__name__).inc()
                log.warning("%s failed: %r", task.__name__, exc)
        run.__name__ = task.__name__
        return app.timer(interval=interval)(run)
    return register
