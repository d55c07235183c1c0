"""take_batches on a Faust agent's in-memory test context: full batches, the window after the first event,
filling while the agent handles a batch, and acks only after a batch was handled."""

import asyncio
import time

import faust

from popscore.stream.faust_ext.micro_batches import take_batches


def run_agent(tmp_path, max_, within, handling_s, feed):
    """Batches the agent saw: (values, monotonic time yielded, acked at yield, previous batch acked by then)."""
    app = faust.App(f"micro-batches-{tmp_path.name}", store="memory://", datadir=str(tmp_path))
    seen = []

    @app.agent()
    async def collect(stream):
        previous = []
        async for batch in take_batches(stream, max_, within=within):
            seen.append(([e.value for e in batch], time.monotonic(), [e.message.acked for e in batch],
                         all(e.message.acked for e in previous)))
            previous = batch
            await asyncio.sleep(handling_s)

    async def main():
        async with collect.test_context() as agent:
            started = time.monotonic()
            await feed(agent)
            await asyncio.sleep(within + handling_s + 0.3)
            return started

    started = asyncio.run(main())
    return [(values, at - started, acked, previous_acked) for values, at, acked, previous_acked in seen]


def test_full_batches_go_at_once_and_a_partial_one_after_the_window(tmp_path):
    async def feed(agent):
        for i in range(7):
            await agent.put(i)

    seen = run_agent(tmp_path, max_=3, within=0.3, handling_s=0.0, feed=feed)
    assert [values for values, *_ in seen] == [[0, 1, 2], [3, 4, 5], [6]]
    assert seen[0][1] < 0.15 and seen[1][1] < 0.15  # full: no wait for the window
    assert seen[2][1] >= 0.29  # partial: the window after its first event


def test_events_that_arrive_during_handling_do_not_wait_another_window(tmp_path):
    async def feed(agent):
        for i in range(3):
            await agent.put(i)
        await asyncio.sleep(0.05)
        await agent.put(3)  # while the first batch is handled (0.6 s)

    seen = run_agent(tmp_path, max_=3, within=0.2, handling_s=0.6, feed=feed)
    assert [values for values, *_ in seen] == [[0, 1, 2], [3]]
    handled_first = seen[0][1] + 0.6
    assert seen[1][1] - handled_first < 0.1  # Faust's take_events would wait its window (0.2 s) again here


def test_a_batch_is_acked_only_after_the_agent_handled_it(tmp_path):
    async def feed(agent):
        for i in range(6):
            await agent.put(i)

    seen = run_agent(tmp_path, max_=3, within=0.2, handling_s=0.1, feed=feed)
    assert [values for values, *_ in seen] == [[0, 1, 2], [3, 4, 5]]
    assert all(not any(acked) for _, _, acked, _ in seen)  # nothing acked while being handled
    assert seen[1][3]  # the first batch was acked once handled


def test_a_batch_the_agent_did_not_finish_is_never_acked(tmp_path):
    """An agent that leaves the loop while holding a batch (an exception, a stop) must not commit it."""
    app = faust.App(f"micro-batches-{tmp_path.name}", store="memory://", datadir=str(tmp_path))
    held = []

    @app.agent()
    async def collect(stream):
        async for batch in take_batches(stream, 3, within=0.1):
            held.append(batch)
            if len(held) == 2:
                break  # as an exception would: the generator is closed at its yield

    async def main():
        async with collect.test_context() as agent:
            for i in range(6):
                await agent.put(i)
            for _ in range(100):
                if len(held) == 2:
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.1)

    asyncio.run(main())
    assert [[e.value for e in b] for b in held] == [[0, 1, 2], [3, 4, 5]]
    assert all(e.message.acked for e in held[0])
    assert not any(e.message.acked for e in held[1])
