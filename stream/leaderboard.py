"""Live leaderboards in Redis sorted sets: top-K by predicted score (overall, per platform, per category)
and "rising fastest" (realised score growth over the last hour, in log units per hour).

Each board is trimmed to ``size`` members after every micro-batch so it stays small (listpack-encoded
up to 128 members) however many posts are live; a post leaving the top returns when it rises again.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as redis


@dataclass(frozen=True)
class BoardEntry:
    post_id: str
    predicted_score: float
    rising: float
    platform: str
    category: str | None


class Leaderboards:
    def __init__(self, client: redis.Redis, key_prefix: str, size: int) -> None:
        self.client = client
        self.prefix = f"{key_prefix}lb:"
        self.size = size

    def key(self, board: str) -> str:
        return f"{self.prefix}{board}"

    @staticmethod
    def boards_of(entry: BoardEntry) -> list[str]:
        boards = ["top", f"top:platform:{entry.platform}"]
        if entry.category:
            boards.append(f"top:category:{entry.category}")
        return boards

    async def update(self, entries: list[BoardEntry]) -> None:
        if not entries:
            return
        touched: set[str] = {"rising"}
        async with self.client.pipeline(transaction=False) as pipe:
            for entry in entries:
                for board in self.boards_of(entry):
                    pipe.zadd(self.key(board), {entry.post_id: entry.predicted_score})
                    touched.add(board)
                pipe.zadd(self.key("rising"), {entry.post_id: entry.rising})
            for board in touched:
                pipe.zremrangebyrank(self.key(board), 0, -(self.size + 1))
            await pipe.execute()

    async def top(self, board: str = "top", k: int = 10) -> list[tuple[str, float]]:
        rows = await self.client.zrevrange(self.key(board), 0, k - 1, withscores=True)
        return [(member.decode() if isinstance(member, bytes) else member, score) for member, score in rows]
