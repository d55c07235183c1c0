"""Micro-batches from a Faust stream, filled while the agent processes the previous one.

Faust's ``Stream.take_events(max_, within)`` stops filling its buffer while the agent handles a batch and,
once the agent is back, waits up to ``within`` again however long the waiting events have waited. The worker
spends much of a batch waiting on Redis, Triton and Kafka round trips, so with ``take_events`` the records
that arrive meanwhile wait for that batch and then for a whole window more: batches cut short by the window,
and an agent idle between them. ``take_batches`` keeps a second buffer filling in the meantime (bounded by
``max_``, after which the stream waits) and yields a batch when it is full or ``within`` after its first
event: under load the next batch is ready when the agent returns, and events that waited during the last
batch do not wait again.

A batch's events are acked only when the agent asks for the next batch, i.e. after it handled this one: an
agent that raises (or stops) out of the loop acks nothing of the batch it held, so those offsets are never
committed and the records are redelivered (``take_events`` acks in a ``finally``, committing a batch that
failed). Events of the batch still filling are not acked. It uses the same ``Stream`` internals as
``take_events`` (listed in the package docstring, ``popscore.stream.faust_ext``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from faust.types import EventT, StreamT
from mode.utils.aiter import aiter


def take_batches(stream: StreamT, max_: int, within: float) -> AsyncIterator[list[EventT]]:
    batches = _take_batches(stream, max_, within)
    stream._active_agens.add(batches)  # closed by Stream.on_stop, like Faust's own take generators
    return batches


async def _take_batches(stream: StreamT, max_: int, within: float) -> AsyncIterator[list[EventT]]:
    loop = asyncio.get_running_loop()
    filling: list[EventT] = []
    first_at = 0.0  # loop time of the filling batch's first event
    arrived, full, room = asyncio.Event(), asyncio.Event(), asyncio.Event()
    room.set()

    async def add_to_batch(value):
        nonlocal first_at
        try:
            if len(filling) >= max_:  # the next batch is full: wait until the agent takes it (or a stop)
                room.clear()
                await stream.wait(room)
            event = stream.current_event
            if event is None:
                raise RuntimeError("take_batches found current_event is None")
            if not filling:
                first_at = loop.time()
                arrived.set()
            filling.append(event)
            if len(filling) >= max_:
                full.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            stream.log.exception("Error adding to a micro-batch: %r", exc)
            await stream.crash(exc)
        return value

    enable_acks = stream.enable_acks
    stream.enable_acks = False  # this generator acks, after the agent has handled a batch
    stream.add_processor(add_to_batch)
    stream._enable_passive(aiter(stream.channel))
    try:
        while not stream.should_stop:
            if not filling:
                arrived.clear()
                await stream.wait_for_stopped(arrived, timeout=1.0)
                continue
            remaining = within - (loop.time() - first_at)
            if remaining > 0 and len(filling) < max_:
                await stream.wait_for_stopped(full, timeout=remaining)
            batch, filling = filling, []
            full.clear()
            room.set()
            yield batch
            for event in batch:  # not reached when the agent raised or left the loop: nothing is acked
                await stream.ack(event)
    finally:
        stream.enable_acks = enable_acks
        stream._processors.remove(add_to_batch)
