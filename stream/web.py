"""The worker's web views, on Faust's web server: liveness, readiness, and the live board (``stream/board/``:
the page, the JSON views and the push feeds)."""

from __future__ import annotations

import faust

from popscore.stream.board.queries import BoardReader, reader_for
from popscore.stream.board.views import add_board_routes
from popscore.stream.heatmap import NoHeatmap, post_heatmap
from popscore.stream.redis_schema import RedisKeys
from popscore.stream.worker import StreamWorker


def readiness(app: faust.App, worker: StreamWorker) -> tuple[bool, dict]:
    """(ready, the failing checks and why): every check of ``worker.health``, and partitions assigned."""
    failing = worker.health.failing()
    if not worker.assigned or app.rebalancing:
        failing["partitions"] = {"detail": "rebalancing: partitions not assigned yet"}
    return not failing, failing


def register_views(app: faust.App, worker: StreamWorker) -> None:
    settings = worker.settings
    current: list[BoardReader] = []

    def board_reader() -> BoardReader | None:
        """The reader of the worker's Redis client, once the worker has one (it connects after the web server
        starts)."""
        if worker.redis is None:
            return None
        if not current or current[0].client is not worker.redis:
            current[:] = [reader_for(worker.redis, RedisKeys.of(settings), settings.worker.leaderboard_size,
                                     settings.score.horizon_s, settings.score.weights_for,
                                     settings.worker.leaderboard_ttl_s)]
        return current[0]

    @app.page("/healthz")
    async def healthz(web, request):
        return web.json({"alive": True})

    @app.page("/readyz")
    async def readyz(web, request):
        ready, failing = readiness(app, worker)
        # A model set that is not servable does not make the worker unready: its platform gets the fallback,
        # and "model_sets" says why.
        return web.json({"ready": ready, "failing": failing, "checks": worker.health.report(),
                         **worker.models.report()}, status=200 if ready else 503)

    add_board_routes(app.web.web_app, board_reader, settings.worker.leaderboard_size,
                     settings.worker.board_poll_interval_s, settings.worker.board_max_posts)

    @app.page("/posts/{post_id}/heatmap.png")
    async def heatmap(web, request, post_id):
        """Occlusion sensitivity of the post's picture through the models serving it (stream/heatmap.py)."""
        try:
            png, heat = await post_heatmap(worker, post_id)
        except NoHeatmap as exc:
            return web.json({"error": str(exc)}, status=404)
        if request.query.get("format") == "json":  # the grid itself: row-major, the drop in predicted log score
            return web.json({"post_id": post_id, "grid": heat.tolist()})
        return web.bytes(png, content_type="image/png")
