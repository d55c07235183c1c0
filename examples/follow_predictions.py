"""Follow the predictions topic with aiokafka: every prediction the workers publish, as they publish it.

    python examples/follow_predictions.py --bootstrap 127.0.0.1:9092 --topic predictions

The records are ``prediction.v1`` JSON (README, "Outputs"), keyed by post id. This reads the whole stream; a
program that cares about a few posts or a board follows the worker's push feeds instead
(``examples/watch_board.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json

from aiokafka import AIOKafkaConsumer


async def follow(bootstrap: str, topic: str, group: str | None, from_start: bool) -> None:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                                auto_offset_reset="earliest" if from_start else "latest")
    await consumer.start()
    try:
        async for message in consumer:
            record = json.loads(message.value)
            interval = record["interval"] or ["?", "?"]
            print(f"{record['as_of']} {record['post_id']:>24} {record['model']:>8} "
                  f"score {record['score']:.1f} [{interval[0]}, {interval[1]}] "
                  f"{record['model_name']} v{record['model_version']}")
    finally:
        await consumer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--topic", default="predictions")
    parser.add_argument("--group", default=None, help="a consumer group, to resume where it left off")
    parser.add_argument("--from-start", action="store_true", help="read the topic from its beginning")
    args = parser.parse_args()
    asyncio.run(follow(args.bootstrap, args.topic, args.group, args.from_start))


if __name__ == "__main__":
    main()
