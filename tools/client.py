"""An async client of the worker's board API (``stream/board/``): the boards, posts, batch lookup of latest
predictions, and the push feeds as async iterators.

A tool for consumers (README, "Live board"): it speaks HTTP only, so it depends on no worker code::

    async with BoardClient("http://127.0.0.1:6066") as client:
        board = await client.board("top", k=10)
        async for board in client.follow_board("rising", k=5):
            ...
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp


class BoardApiError(RuntimeError):
    """The API refused a request (400: a bad parameter, 404: unknown post, 503: worker not ready)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Prediction:
    """A post's latest prediction of one model kind, as the worker keeps it."""

    model_name: str
    model_version: str
    as_of: str
    score: float
    interval: tuple[float, float] | None
    flags: tuple[str, ...] = ()
    explanation: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, body: dict) -> "Prediction":
        interval = body.get("interval")
        return cls(model_name=body["model_name"], model_version=str(body["model_version"]), as_of=body["as_of"],
                   score=body["score"], interval=None if interval is None else (interval[0], interval[1]),
                   flags=tuple(body.get("flags") or ()), explanation=body.get("explanation") or {})


def _predictions(body: dict | None) -> dict[str, Prediction]:
    return {kind: Prediction.from_json(p) for kind, p in (body or {}).items()}


@dataclass(frozen=True)
class BoardEntry:
    rank: int
    post_id: str
    value: float  # the board's ranking value: predicted score, or log-score growth per hour on "rising"
    title: str | None
    platform: str | None
    category: str | None
    created_at: str | None
    age_s: float | None
    counters: dict[str, float | None] | None  # the latest observation's counters
    prediction: Prediction | None  # the temporal prediction, else the static one

    @classmethod
    def from_json(cls, body: dict) -> "BoardEntry":
        prediction = body.get("prediction")
        return cls(rank=body["rank"], post_id=body["post_id"], value=body["value"], title=body.get("title"),
                   platform=body.get("platform"), category=body.get("category"), created_at=body.get("created_at"),
                   age_s=body.get("age_s"), counters=body.get("counters"),
                   prediction=None if prediction is None else Prediction.from_json(prediction))


@dataclass(frozen=True)
class Board:
    name: str
    kind: str
    ranks_by: str
    read_at: str
    entries: list[BoardEntry]

    @classmethod
    def from_json(cls, body: dict) -> "Board":
        return cls(name=body["board"], kind=body["kind"], ranks_by=body["ranks_by"], read_at=body["read_at"],
                   entries=[BoardEntry.from_json(e) for e in body["entries"]])


@dataclass(frozen=True)
class PredictionUpdate:
    """A ``prediction`` event of the prediction feed: a post's latest predictions after a change."""

    post_id: str
    predictions: dict[str, Prediction]


async def sse_events(lines: AsyncIterator[bytes]) -> AsyncIterator[tuple[str, str]]:
    """(event name, data) of a Server-Sent Events stream, read line by line; comments (keepalives) skipped."""
    name, data = "message", []
    async for raw in lines:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data:
                yield name, "\n".join(data)
            name, data = "message", []
        elif line.startswith(":"):
            continue
        else:
            key, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if key == "event":
                name = value
            elif key == "data":
                data.append(value)


class BoardClient:
    """One HTTP session to one worker (any worker: the boards live in Redis)."""

    def __init__(self, base_url: str, timeout_s: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "BoardClient":
        self._session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use the client in `async with BoardClient(...) as client:`")
        return self._session

    async def _json(self, method: str, path: str, **kwargs) -> dict:
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with self.session.request(method, self.base_url + path, timeout=timeout, **kwargs) as response:
            body = await response.json(content_type=None)
            if response.status != 200:
                raise BoardApiError(response.status, body.get("error", str(body)))
            return body

    async def boards(self) -> list[str]:
        return [b["name"] for b in (await self._json("GET", "/boards"))["boards"]]

    async def board(self, name: str = "top", k: int = 10) -> Board:
        return Board.from_json(await self._json("GET", "/leaderboard", params={"board": name, "k": str(k)}))

    async def post(self, post_id: str) -> dict:
        """The post view's JSON: what Redis holds of the post, its sequence, its latest predictions."""
        return await self._json("GET", f"/posts/{post_id}")

    async def latest(self, post_ids: Iterable[str]) -> dict[str, dict[str, Prediction] | None]:
        """Many posts' latest predictions in one request; None for a post the worker does not hold."""
        body = await self._json("POST", "/predictions", json={"post_ids": list(post_ids)})
        return {post_id: None if found is None else _predictions(found)
                for post_id, found in body["predictions"].items()}

    async def _follow(self, path: str, params) -> AsyncIterator[tuple[str, str]]:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout_s)
        async with self.session.get(self.base_url + path, params=params, timeout=timeout) as response:
            if response.status != 200:
                body = await response.json(content_type=None)
                raise BoardApiError(response.status, body.get("error", str(body)))
            async for event in sse_events(response.content):
                yield event

    async def follow_board(self, name: str = "top", k: int = 10) -> AsyncIterator[Board]:
        """The board now, then each time it changes. Ends only when the connection does: reconnecting
        restarts from the current board, so nothing of the latest state is missed."""
        async for event, data in self._follow("/feed/board", {"board": name, "k": str(k)}):
            if event == "board":
                yield Board.from_json(json.loads(data))

    async def follow_predictions(self, post_ids: Iterable[str]) -> AsyncIterator[PredictionUpdate]:
        """Each post's latest predictions now (the posts the worker holds), then at every change."""
        params = [("post_id", post_id) for post_id in post_ids]
        async for event, data in self._follow("/feed/predictions", params):
            if event == "prediction":
                body = json.loads(data)
                yield PredictionUpdate(body["post_id"], _predictions(body["predictions"]))
