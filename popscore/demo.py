"""The main job of the quick start: the embedded stack fed with a built-in sample, end to end.

It starts the stack, replays the sample (posts and snapshots in event-time order, plus a few broken
records to show the dead-letter path), waits until the worker has stored everything, prints what it
stored, and stops the stack.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from importlib import resources
from typing import Callable

import redis

from popscore.contract import DeadLetter
from popscore.settings import Settings
from popscore.stack.stack import EmbeddedStack
from popscore.stream.sequence_store import decode_sequence

SAMPLE = "demo.jsonl"

BROKEN_RECORDS: list[tuple[bytes, bytes]] = [
    (b"demo-broken-1", b"{this is not json"),
    (b"demo-broken-2", json.dumps({"schema": "snapshot.v1", "post_id": "demo-broken-2",
                                   "observed_at": "2024-01-01T00:00:00Z", "counts": {"likes": -3}}).encode()),
    (b"demo-broken-3", json.dumps({"schema": "snapshot.v1", "post_id": "demo-broken-3",
                                   "observed_at": "1999-01-01T00:00:00Z", "counts": {"likes": 3}}).encode()),
]


def sample_lines() -> list[str]:
    text = resources.files("popscore").joinpath("sample", SAMPLE).read_text()
    return [line for line in text.splitlines() if line.strip()]


async def _produce(bootstrap: str, settings: Settings, lines: list[str]) -> Counter:
    from aiokafka import AIOKafkaProducer

    topics = settings.kafka.topics
    topic_of = {"post.v1": topics.posts, "snapshot.v1": topics.snapshots}
    sent: Counter = Counter()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        futures = []
        for line in lines:
            event = json.loads(line)
            topic = topic_of[event["schema"]]
            futures.append(await producer.send(topic, key=event["post_id"].encode(), value=line.encode()))
            sent[topic] += 1
        for key, value in BROKEN_RECORDS:
            futures.append(await producer.send(topics.snapshots, key=key, value=value))
            sent["broken"] += 1
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return sent


async def _dead_letters(bootstrap: str, topic: str, expected: int, timeout_s: float) -> list[DeadLetter]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    letters: list[DeadLetter] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(letters) < expected and time.monotonic() < deadline:
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                letters.extend(DeadLetter.model_validate_json(m.value) for m in messages)
    finally:
        await consumer.stop()
    return letters


def run_demo(settings: Settings, log: Callable[[str], None] = print, timeout_s: float = 60.0) -> int:
    lines = sample_lines()
    post_ids = sorted({json.loads(line)["post_id"] for line in lines})
    stack = EmbeddedStack(settings, log=log)
    state = stack.start(with_worker=True)
    try:
        endpoints = state.endpoints_obj()
        sent = asyncio.run(_produce(endpoints.broker_bootstrap, settings, lines))
        log(f"sent {sent[settings.kafka.topics.posts]} posts, {sent[settings.kafka.topics.snapshots]} snapshots "
            f"and {sent['broken']} broken records")
        client = redis.Redis.from_url(endpoints.redis_url)
        prefix = settings.redis.key_prefix
        expected_obs = sum(1 for line in lines if '"snapshot.v1"' in line)
        deadline = time.monotonic() + timeout_s
        stored = 0
        while time.monotonic() < deadline:
            stored = sum(len(decode_sequence(client.get(f"{prefix}seq:{p}") or b"")) for p in post_ids)
            if stored >= expected_obs:
                break
            time.sleep(0.3)
        letters = asyncio.run(_dead_letters(endpoints.broker_bootstrap, settings.kafka.topics.deadletter,
                                            len(BROKEN_RECORDS), timeout_s))
        _print_stored(client, prefix, post_ids, log)
        log(f"stored {stored} of {expected_obs} snapshots in {len(post_ids)} sequences")
        for letter in letters:
            log(f"dead letter: {letter.reason.value:10} {letter.detail[:90]}")
        ok = stored == expected_obs and len(letters) == len(BROKEN_RECORDS)
        log("demo OK" if ok else "demo FAILED: not everything arrived where it should")
        return 0 if ok else 1
    finally:
        stack.stop()
        log("stack stopped")


def _print_stored(client: redis.Redis, prefix: str, post_ids: list[str], log: Callable[[str], None],
                  rows: int = 8) -> None:
    log(f"{'post_id':28} {'platform':10} {'obs':>4} {'first seen':>20} {'latest likes':>12} {'latest views':>12}")
    for post_id in post_ids[:rows]:
        seq = decode_sequence(client.get(f"{prefix}seq:{post_id}") or b"")
        meta = {k.decode(): v.decode() for k, v in client.hgetall(f"{prefix}post:{post_id}").items()}
        if len(seq) == 0:
            log(f"{post_id:28} {meta.get('platform', '?'):10} {0:>4}")
            continue
        first = time.strftime("%Y-%m-%d %H:%M", time.gmtime(seq[0, 0]))
        log(f"{post_id:28} {meta.get('platform', '?'):10} {len(seq):>4} {first:>20} "
            f"{_fmt(seq[-1, 2]):>12} {_fmt(seq[-1, 1]):>12}")
    if len(post_ids) > rows:
        log(f"... and {len(post_ids) - rows} more")


def _fmt(value: float) -> str:
    return "-" if value != value else f"{value:,.0f}"
