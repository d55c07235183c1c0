"""Watch a board through a worker's push feed, with popscore's client (``popscore.tools.client``).

    python examples/watch_board.py --url http://127.0.0.1:6066 --board rising --k 5
"""

from __future__ import annotations

import argparse
import asyncio

from popscore.tools.client import BoardClient


async def watch(url: str, board: str, k: int) -> None:
    async with BoardClient(url) as client:
        print("boards:", ", ".join(await client.boards()))
        async for current in client.follow_board(board, k):
            print(f"--- {current.name} read at {current.read_at}")
            for entry in current.entries:
                predicted = entry.prediction.score if entry.prediction else float("nan")
                print(f"{entry.rank:>3} {entry.value:10.3f} predicted {predicted:10.1f}  "
                      f"{entry.platform} {entry.title or entry.post_id}")
            latest = await client.latest(e.post_id for e in current.entries)  # one request for all of them
            print(f"    {sum(found is not None for found in latest.values())} of them with predictions")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:6066")
    parser.add_argument("--board", default="top")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    asyncio.run(watch(args.url, args.board, args.k))


if __name__ == "__main__":
    main()
