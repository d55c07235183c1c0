"""The worker's web views, on Faust's web server: liveness, readiness, the leaderboards and one post's state."""

from __future__ import annotations

import faust

from popscore.settings import COUNTER_NAMES
from popscore.stream.heatmap import NoHeatmap, post_heatmap
from popscore.stream.redis_schema import PostMeta, latest_predictions
from popscore.stream.worker import StreamWorker


def readiness(app: faust.App, worker: StreamWorker) -> tuple[bool, dict]:
    """(ready, the failing checks and why): every check of ``worker.health``, and partitions assigned."""
    failing = worker.health.failing()
    if not worker.assigned or app.rebalancing:
        failing["partitions"] = {"detail": "rebalancing: partitions not assigned yet"}
    return not failing, failing


def register_views(app: faust.App, worker: StreamWorker) -> None:
    leaderboard_size = worker.settings.worker.leaderboard_size

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

    @app.page("/leaderboard")
    async def leaderboard(web, request):
        board = request.query.get("board", "top")
        k = min(int(request.query.get("k", "10")), leaderboard_size)
        rows = await worker.boards.top(board, k)
        return web.json({"board": board, "entries": [{"post_id": p, "value": v} for p, v in rows]})

    @app.page("/posts/{post_id}")
    async def post(web, request, post_id):
        fields = await worker.store.get_post(post_id)
        sequence = await worker.store.get(post_id)
        if not fields and len(sequence) == 0:
            return web.json({"error": f"unknown post {post_id!r}"}, status=404)
        return web.json({
            "post_id": post_id,
            "platform": PostMeta.from_hash(fields).platform,
            "sequence": {"columns": ["observed_at", *COUNTER_NAMES],
                         "rows": [[None if v != v else v for v in row] for row in sequence.tolist()]},
            "predictions": latest_predictions(fields),
        })

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
