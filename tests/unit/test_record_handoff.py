"""The consumer's inline record hand-off: delivers, yields to a flow stop, passes real errors through."""

import asyncio

import pytest

from popscore.stream.faust_ext.transport import RecordHandoff


def test_a_callback_that_completes_is_delivered():
    async def scenario():
        queue: asyncio.Queue[int] = asyncio.Queue()
        handoff = RecordHandoff()
        delivered = [await handoff.run(queue.put(i)) for i in range(3)]
        return delivered, [queue.get_nowait() for _ in range(3)]

    assert asyncio.run(scenario()) == ([True, True, True], [0, 1, 2])


def test_interrupt_cancels_a_callback_blocked_on_a_full_queue():
    async def scenario():
        queue: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
        queue.put_nowait(0)
        handoff = RecordHandoff()
        asyncio.get_running_loop().call_later(0.05, handoff.interrupt)
        delivered = await asyncio.wait_for(handoff.run(queue.put(1)), 5)
        return delivered, queue.qsize(), queue.get_nowait()

    assert asyncio.run(scenario()) == (False, 1, 0)


def test_interrupt_between_records_does_not_touch_the_next_one():
    async def scenario():
        queue: asyncio.Queue[int] = asyncio.Queue()
        handoff = RecordHandoff()
        handoff.interrupt()  # nothing in flight
        return await handoff.run(queue.put(1)), queue.qsize()

    assert asyncio.run(scenario()) == (True, 1)


def test_the_callbacks_own_timeout_and_errors_propagate():
    async def times_out():
        raise TimeoutError("from the callback")

    async def fails():
        raise ValueError("bad record")

    with pytest.raises(TimeoutError, match="from the callback"):
        asyncio.run(RecordHandoff().run(times_out()))
    with pytest.raises(ValueError, match="bad record"):
        asyncio.run(RecordHandoff().run(fails()))


def test_cancelling_the_consumer_task_is_not_swallowed():
    async def scenario():
        queue: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
        queue.put_nowait(0)
        task = asyncio.ensure_future(RecordHandoff().run(queue.put(1)))
        await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return task.cancelled()

    assert asyncio.run(scenario()) is True


def test_an_interruption_during_a_stop_does_not_hide_the_stop():
    async def scenario():
        queue: asyncio.Queue[int] = asyncio.Queue(maxsize=1)
        queue.put_nowait(0)
        handoff = RecordHandoff()
        task = asyncio.ensure_future(handoff.run(queue.put(1)))
        await asyncio.sleep(0.02)
        handoff.interrupt()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return task.cancelled()

    assert asyncio.run(scenario()) is True
