"""What the board views read from Redis, and the checks of their query parameters.

A bad parameter raises ``BadQuery``, which the views answer with 400 and its message; every read goes through
``redis_schema`` (key and field names, encodings).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from popscore import features as F
from popscore.settings import COUNTER_NAMES
from popscore.stream.redis_client import AsyncClient
from popscore.stream.redis_schema import CATEGORY, CREATED_AT, PLATFORM, RECORD, RISING_BOARD, TITLE, TOP_BOARD, \
    RedisKeys, decode_sequence, latest_predictions, merge_rankings, prediction_field

PREDICTION_KINDS = ("temporal", "static")
"""The model kinds whose latest prediction a post hash keeps; an entry shows the temporal one, else the static."""

ENTRY_FIELDS = (CREATED_AT, PLATFORM, CATEGORY, TITLE, *(prediction_field(kind) for kind in PREDICTION_KINDS))

_DIGITS = re.compile(r"[0-9]{1,9}")


class BadQuery(ValueError):
    """A query parameter the views refuse: answered with 400 and this message."""


def parse_k(raw: str | None, board_size: int, default: int = 10) -> int:
    """``k``, the entries wanted: a whole number from 1 to the board size (a board keeps no more)."""
    if raw is None:
        return min(default, board_size)
    if not _DIGITS.fullmatch(raw.strip()):
        raise BadQuery(f"k must be a whole number from 1 to {board_size}, not {raw!r}")
    k = int(raw)
    if not 1 <= k <= board_size:
        raise BadQuery(f"k must be from 1 to {board_size} (the entries a board keeps), not {k}")
    return k


def parse_post_ids(post_ids: Sequence[object], limit: int) -> list[str]:
    """Post ids of a batch lookup or a prediction feed: 1 to ``limit`` non-empty strings, duplicates dropped."""
    if not isinstance(post_ids, (list, tuple)) or not post_ids:
        raise BadQuery("name at least one post id (post_id=... in a feed, {\"post_ids\": [...]} in a lookup)")
    if len(post_ids) > limit:
        raise BadQuery(f"at most {limit} post ids per request, not {len(post_ids)}")
    if not all(isinstance(p, str) and p for p in post_ids):
        raise BadQuery("post ids must be non-empty strings")
    return list(dict.fromkeys(post_ids))


def describe_board(name: str) -> dict:
    """A board's name and what it ranks: ``top`` and its platform and category cuts by predicted score,
    ``rising`` by realised log-score growth per hour over the last hour."""
    if name == RISING_BOARD:
        return {"name": name, "kind": "rising", "ranks_by": "log-score growth per hour over the last hour"}
    kind, _, value = name.partition(":")[2].partition(":")
    described = {"name": name, "kind": kind or "top", "ranks_by": "predicted score at the horizon"}
    if value:
        described[kind] = value
    return described


def _iso(epoch_s: float | None) -> str | None:
    return None if epoch_s is None else datetime.fromtimestamp(epoch_s, timezone.utc).isoformat().replace(
        "+00:00", "Z")


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


def _finite(value: float) -> float | None:
    return None if value != value else value


@dataclass
class BoardReader:
    """Reads the boards and posts the worker wrote; one per Redis client. A board is the merge of its shards'
    (``redis_schema``), its registry the union of theirs."""

    client: AsyncClient
    keys: RedisKeys
    board_size: int
    horizon_s: int
    weights_for: Callable[[str], dict[str, float]]
    board_ttl_s: float

    async def board_names(self) -> list[str]:
        """``top`` and ``rising``, then every board a prediction has written in any shard (``RedisKeys.boards``)
        that has not expired, sorted."""
        since = time.time() - self.board_ttl_s
        async with self.client.pipeline(transaction=False) as pipe:
            for shard in self.keys.all_shards:
                pipe.zrangebyscore(self.keys.boards(shard), since, "+inf")
            written = {member.decode() for members in await pipe.execute() for member in members}
        return [TOP_BOARD, RISING_BOARD] + sorted(written - {TOP_BOARD, RISING_BOARD})

    async def check_board(self, name: str | None) -> str:
        name = TOP_BOARD if name is None else name
        if name in (TOP_BOARD, RISING_BOARD):
            return name
        async with self.client.pipeline(transaction=False) as pipe:
            for shard in self.keys.all_shards:
                pipe.zscore(self.keys.boards(shard), name)
            written = [when for when in await pipe.execute() if when is not None]
        if written and max(written) >= time.time() - self.board_ttl_s:
            return name
        raise BadQuery(f"unknown board {name!r}: GET /boards lists the boards")

    async def ranking(self, board: str, k: int) -> list[tuple[str, float]]:
        """(post id, value) of the board's best ``k``, merged from its shards' best ``k``: the cheap read a feed
        polls (one ZREVRANGE per shard, in one pipeline)."""
        async with self.client.pipeline(transaction=False) as pipe:
            for shard in self.keys.all_shards:
                pipe.zrevrange(self.keys.board(board, shard), 0, k - 1, withscores=True)
            return merge_rankings(await pipe.execute(), k)

    async def board(self, board: str, k: int, ranking: list[tuple[str, float]] | None = None) -> dict:
        """The board with each entry's post: title, platform, category, age, latest counters, prediction."""
        ranking = await self.ranking(board, k) if ranking is None else ranking
        now = time.time()
        async with self.client.pipeline(transaction=False) as pipe:
            for post_id, _ in ranking:
                pipe.hmget(self.keys.post(post_id), ENTRY_FIELDS)
                pipe.getrange(self.keys.sequence(post_id), -RECORD.size, -1)  # its last observation only
            replies = await pipe.execute()
        entries = []
        for rank, ((post_id, value), fields, last) in enumerate(zip(ranking, replies[::2], replies[1::2]), 1):
            created_at, platform, category, title, *predictions = fields
            created = None if created_at is None else float(created_at)
            observed, counters = None, None
            if last and len(last) == RECORD.size:
                row = RECORD.unpack(last)
                observed, counters = row[0], dict(zip(COUNTER_NAMES, map(_finite, row[1:])))
            # The age the model saw: at the latest observation (live, about now; in a replay, the replayed time).
            age_s = None if created is None else (observed if observed is not None else now) - created
            latest = next((json.loads(p) for p in predictions if p is not None), None)
            entries.append({
                "rank": rank, "post_id": post_id, "value": value, "title": _text(title),
                "platform": _text(platform), "category": _text(category), "created_at": _iso(created),
                "age_s": None if age_s is None else round(age_s, 1), "observed_at": _iso(observed),
                "counters": counters, "prediction": latest,
            })
        return {**describe_board(board), "board": board, "k": k, "read_at": _iso(now), "entries": entries}

    async def latest(self, post_ids: list[str]) -> dict[str, dict[str, dict] | None]:
        """Each post's latest prediction per model kind; None for a post Redis does not hold (never seen,
        or expired)."""
        async with self.client.pipeline(transaction=False) as pipe:
            for post_id in post_ids:
                pipe.hmget(self.keys.post(post_id), [prediction_field(kind) for kind in PREDICTION_KINDS])
            replies = await pipe.execute()
        return {post_id: ({kind: json.loads(v) for kind, v in zip(PREDICTION_KINDS, values) if v is not None}
                          or None) for post_id, values in zip(post_ids, replies)}

    async def latest_raw(self, post_ids: list[str]) -> list[tuple]:
        """The stored predictions as bytes, one tuple per post: what a feed compares between polls."""
        async with self.client.pipeline(transaction=False) as pipe:
            for post_id in post_ids:
                pipe.hmget(self.keys.post(post_id), [prediction_field(kind) for kind in PREDICTION_KINDS])
            return [tuple(values) for values in await pipe.execute()]

    async def post(self, post_id: str) -> dict | None:
        """One post: what the worker kept of it, its observed sequence with its score, its latest predictions
        (with their explanations); None if Redis holds nothing of it."""
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.post(post_id))
            pipe.get(self.keys.sequence(post_id))
            fields, blob = await pipe.execute()
        if not fields and not blob:
            return None
        sequence = decode_sequence(blob) if blob else np.empty((0, 1 + len(COUNTER_NAMES)))
        platform = _text(fields.get(PLATFORM.encode()))
        created = fields.get(CREATED_AT.encode())
        created = None if created is None else float(created)
        score = None
        if platform is not None and len(sequence):
            weights = F.weight_vector(self.weights_for(platform), COUNTER_NAMES)
            score = F.score_of(sequence[:, 1:], weights).tolist()
        return {
            "post_id": post_id, "platform": platform, "category": _text(fields.get(CATEGORY.encode())),
            "title": _text(fields.get(TITLE.encode())), "created_at": _iso(created), "horizon_s": self.horizon_s,
            "sequence": {"columns": ["observed_at", *COUNTER_NAMES],
                         "rows": [[_finite(v) for v in row] for row in sequence.tolist()],
                         "score": score},
            "predictions": latest_predictions(fields),
        }


def reader_for(client: AsyncClient, keys: RedisKeys, board_size: int, horizon_s: int,
               weights_for: Callable[[str], dict[str, float]], board_ttl_s: float) -> BoardReader:
    return BoardReader(client, keys, board_size, horizon_s, weights_for, board_ttl_s)
