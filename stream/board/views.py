"""The board's HTTP routes, added to the aiohttp application under Faust's web server.

They are plain aiohttp handlers, not Faust views: a push feed is a streaming response (Server-Sent Events),
which Faust's view wrapper cannot return. Feeds poll Redis (one cheap read per interval and connection) rather
than subscribe to Redis pub/sub: the boards already live in Redis, so any worker can serve any feed, nothing is
added to the prediction path, and a subscriber that reconnects starts from the current state instead of a missed
message (docs/architecture.md, "Views").
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from importlib import resources

from aiohttp import web

from popscore.stream.board.queries import PREDICTION_KINDS, BadQuery, BoardReader, describe_board, parse_k, \
    parse_post_ids

KEEPALIVE_S = 15.0
"""Seconds of silence after which a feed sends an SSE comment, so proxies and clients keep the connection."""


def static_dir():
    return resources.files("popscore.stream.board").joinpath("static")


def _json(body: dict, status: int = 200) -> web.Response:
    return web.json_response(body, status=status, dumps=lambda o: json.dumps(o, allow_nan=False))


def _bad(error: BadQuery) -> web.Response:
    return _json({"error": str(error)}, status=400)


def _event(name: str, body: dict) -> bytes:
    return f"event: {name}\ndata: {json.dumps(body, allow_nan=False)}\n\n".encode()


async def _open_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)
    return response


def add_board_routes(application: web.Application, reader: Callable[[], BoardReader | None], board_size: int,
                     poll_s: float, max_posts: int) -> None:
    """``reader()`` is None until the worker has its Redis client: the views answer 503 meanwhile."""
    page = static_dir()
    router = application.router
    stopping = asyncio.Event()

    async def end_feeds(_) -> None:
        """Feeds end when the server shuts down: aiohttp would otherwise wait for them (its shutdown timeout)
        before the worker can stop."""
        stopping.set()

    application.on_shutdown.append(end_feeds)

    async def next_poll() -> bool:
        """Wait one poll interval; False once the server is shutting down."""
        try:
            await asyncio.wait_for(stopping.wait(), poll_s)
        except asyncio.TimeoutError:
            return True
        return False

    def ready_reader() -> BoardReader:
        current = reader()
        if current is None:
            raise web.HTTPServiceUnavailable(text=json.dumps({"error": "the worker has not connected to Redis yet"}),
                                             content_type="application/json")
        return current

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=page.joinpath("index.html").read_text(), content_type="text/html")

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        types = {"js": "text/javascript", "css": "text/css"}
        kind = name.rpartition(".")[2]
        if "/" in name or kind not in types or not page.joinpath(name).is_file():
            raise web.HTTPNotFound()
        return web.Response(text=page.joinpath(name).read_text(), content_type=types[kind])

    async def boards(request: web.Request) -> web.Response:
        names = await ready_reader().board_names()
        return _json({"size": board_size, "boards": [describe_board(name) for name in names]})

    async def leaderboard(request: web.Request) -> web.Response:
        board_reader = ready_reader()
        try:
            k = parse_k(request.query.get("k"), board_size)
            name = await board_reader.check_board(request.query.get("board"))
        except BadQuery as error:
            return _bad(error)
        return _json(await board_reader.board(name, k))

    async def post(request: web.Request) -> web.Response:
        post_id = request.match_info["post_id"]
        found = await ready_reader().post(post_id)
        if found is None:
            return _json({"error": f"unknown post {post_id!r}"}, status=404)
        return _json(found)

    async def predictions(request: web.Request) -> web.Response:
        board_reader = ready_reader()
        try:
            try:
                body = await request.json()
            except ValueError:
                raise BadQuery("the body must be JSON: {\"post_ids\": [\"...\", ...]}") from None
            if not isinstance(body, dict):
                raise BadQuery("the body must be a JSON object: {\"post_ids\": [\"...\", ...]}")
            post_ids = parse_post_ids(body.get("post_ids"), max_posts)
        except BadQuery as error:
            return _bad(error)
        latest = await board_reader.latest(post_ids)
        return _json({"predictions": latest, "unknown": [p for p, found in latest.items() if found is None]})

    async def board_feed(request: web.Request) -> web.StreamResponse:
        """``board`` events: the whole board (as ``/leaderboard``) at once and whenever its ranking or values
        change."""
        board_reader = ready_reader()
        try:
            k = parse_k(request.query.get("k"), board_size)
            name = await board_reader.check_board(request.query.get("board"))
        except BadQuery as error:
            return _bad(error)
        response = await _open_stream(request)
        last, last_sent = None, time.monotonic()
        try:
            while True:
                ranking = await board_reader.ranking(name, k)
                if ranking != last:
                    await response.write(_event("board", await board_reader.board(name, k, ranking)))
                    last, last_sent = ranking, time.monotonic()
                elif time.monotonic() - last_sent > KEEPALIVE_S:
                    await response.write(b": keepalive\n\n")
                    last_sent = time.monotonic()
                if not await next_poll():
                    return response
        except ConnectionResetError:  # the subscriber left
            return response

    async def prediction_feed(request: web.Request) -> web.StreamResponse:
        """``prediction`` events, one per post: its latest predictions at once (posts Redis holds) and whenever
        one changes."""
        board_reader = ready_reader()
        try:
            post_ids = parse_post_ids(request.query.getall("post_id", []), max_posts)
        except BadQuery as error:
            return _bad(error)
        response = await _open_stream(request)
        last: list[tuple] = [(None, None)] * len(post_ids)
        last_sent = time.monotonic()
        try:
            while True:
                current = await board_reader.latest_raw(post_ids)
                changed = [i for i, (now, before) in enumerate(zip(current, last)) if now != before]
                for i in changed:
                    kinds = {kind: json.loads(value) for kind, value in zip(PREDICTION_KINDS, current[i])
                             if value is not None}
                    await response.write(_event("prediction", {"post_id": post_ids[i], "predictions": kinds}))
                if changed:
                    last, last_sent = current, time.monotonic()
                elif time.monotonic() - last_sent > KEEPALIVE_S:
                    await response.write(b": keepalive\n\n")
                    last_sent = time.monotonic()
                if not await next_poll():
                    return response
        except ConnectionResetError:  # the subscriber left
            return response

    router.add_get("/", index)
    router.add_get("/static/{name}", static)
    router.add_get("/boards", boards)
    router.add_get("/leaderboard", leaderboard)
    router.add_get("/posts/{post_id}", post)
    router.add_post("/predictions", predictions)
    router.add_get("/feed/board", board_feed)
    router.add_get("/feed/predictions", prediction_feed)
