"""The main job of the quick start: the embedded stack fed with a built-in sample, end to end.

It starts the stack, replays the sample (or ``--data FILE``) in event-time order compressed into a few
seconds, sends a few broken records to show the dead-letter path, prints the predictions live as they
are published and the leaderboard, checks that every snapshot was stored, and stops the stack.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Callable

from popscore.contract import DeadLetter, Snapshot
from popscore.eventfile import event_time
from popscore.settings import Settings
from popscore.stream.redis_client import connect_sync
from popscore.stream.redis_schema import RISING_BOARD, TOP_BOARD, RedisKeys, decode_sequence
from popscore.tools.replay import ReplayOptions, replay
from popscore.tools.stack.stack import EmbeddedStack

BROKEN_RECORDS: list[tuple[bytes, bytes]] = [
    (b"demo-broken-1", b"{this is not json"),
    (b"demo-broken-2", json.dumps({"schema": "snapshot.v1", "post_id": "demo-broken-2",
                                   "observed_at": "2024-01-01T00:00:00Z", "counts": {"likes": -3}}).encode()),
    (b"demo-broken-3", json.dumps({"schema": "snapshot.v1", "post_id": "demo-broken-3",
                                   "observed_at": "1999-01-01T00:00:00Z", "counts": {"likes": 3}}).encode()),
]


def sample_path() -> Path:
    return Path(str(resources.files("popscore.tools.sample").joinpath("demo.jsonl")))


def read_events(path: Path):
    from popscore.eventfile import read_lines

    return list(read_lines(path))


async def _produce_broken(bootstrap: str, topic: str) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for key, value in BROKEN_RECORDS:
            await producer.send_and_wait(topic, key=key, value=value)
    finally:
        await producer.stop()


async def _follow(bootstrap: str, topics: list[str], stop: asyncio.Event, on_message) -> None:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    try:
        while not stop.is_set():
            for messages in (await consumer.getmany(timeout_ms=200)).values():
                for message in messages:
                    on_message(message)
    finally:
        await consumer.stop()


def _leaderboard(web: str, board: str = TOP_BOARD, k: int = 5) -> list[dict]:
    with urllib.request.urlopen(f"{web}/leaderboard?board={board}&k={k}", timeout=5) as response:
        return json.loads(response.read())["entries"]


async def _run(settings: Settings, endpoints, events, seconds: float, log: Callable[[str], None]) -> dict:
    topics = settings.kafka.topics
    seen: Counter = Counter()
    letters: list[DeadLetter] = []
    stop = asyncio.Event()

    def on_message(message) -> None:
        if message.topic == topics.deadletter:
            letters.append(DeadLetter.model_validate_json(message.value))
            return
        record = json.loads(message.value)
        seen[record["model"]] += 1
        if sum(seen.values()) % 25 == 1:
            interval = record.get("interval") or [0, 0]
            words = sorted(record["explanation"].get("word_attention", []), key=lambda wa: -wa[1])[:3]
            read = "  words: " + ", ".join(f"{w} {a:.2f}" for w, a in words) if words else ""
            log(f"prediction {record['model']:8} v{record['model_version']:3} {record['post_id']:24} "
                f"as of {record['as_of']}: {record['score']:10,.1f}  [{interval[0]:,.0f} .. {interval[1]:,.0f}]{read}")

    follower = asyncio.create_task(_follow(endpoints.broker_bootstrap, [topics.predictions, topics.deadletter],
                                           stop, on_message))
    span = max(1.0, (event_time(events[-1][1]) - event_time(events[0][1])).total_seconds())
    result = await replay(events, endpoints.broker_bootstrap, topics,
                          ReplayOptions(speed=span / seconds, create_topics=False, progress=False))
    log(result.render())
    await _produce_broken(endpoints.broker_bootstrap, topics.snapshots)
    await asyncio.sleep(3.0)
    deadline = time.monotonic() + 30
    while len(letters) < len(BROKEN_RECORDS) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    stop.set()
    await follower
    return {"predictions": seen, "letters": letters, "replay": result}


def run_demo(settings: Settings, data: Path | None = None, seconds: float = 10.0,
             log: Callable[[str], None] = print) -> int:
    events = read_events(data or sample_path())
    post_ids = sorted({event.post_id for _, event in events})
    n_snapshots = sum(1 for _, event in events if isinstance(event, Snapshot))
    stack = EmbeddedStack(settings, log=log)
    state = stack.start(with_worker=True)
    try:
        endpoints = state.endpoints_obj()
        outcome = asyncio.run(_run(settings, endpoints, events, seconds, log))
        client = connect_sync(settings.redis.model_copy(update={"url": endpoints.redis_url,
                                                                "mode": endpoints.redis_mode}))
        keys = RedisKeys.of(settings)
        stored = sum(len(decode_sequence(client.get(keys.sequence(p)) or b"")) for p in post_ids)
        web = endpoints.as_dict()["worker_web"]
        log("leaderboard (predicted score at the horizon):")
        for rank, row in enumerate(_leaderboard(web), 1):
            log(f"  {rank}. {row['post_id']:24} {row['value']:12,.1f}")
        log("rising fastest (log score growth over the last hour):")
        for rank, row in enumerate(_leaderboard(web, RISING_BOARD), 1):
            log(f"  {rank}. {row['post_id']:24} {row['value']:12.3f}")
        for letter in outcome["letters"]:
            log(f"dead letter: {letter.reason.value:10} {letter.detail[:90]}")
        predictions = outcome["predictions"]
        log(f"stored {stored} of {n_snapshots} snapshots in {len(post_ids)} sequences; predictions: "
            f"{predictions['static']} static, {predictions['temporal']} temporal; "
            f"{len(outcome['letters'])} dead letters")
        ok = (stored == n_snapshots and len(outcome["letters"]) == len(BROKEN_RECORDS)
              and predictions["temporal"] > 0 and outcome["replay"].complete)
        log("demo OK" if ok else "demo FAILED: not everything arrived where it should")
        return 0 if ok else 1
    finally:
        stack.stop()
        log("stack stopped")
