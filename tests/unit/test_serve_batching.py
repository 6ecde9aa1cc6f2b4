"""The batcher without Ray: one run per batch, size limits, waiting, coalescing while busy, cancellation."""

from __future__ import annotations

import asyncio

import pytest

from rayline.serve.batching import Batcher


class Model:
    """Records each batch it runs; answers item * 10; takes `seconds` per batch."""

    def __init__(self, seconds: float = 0.0, fail: bool = False):
        self.batches: list[list[int]] = []
        self.seconds = seconds
        self.fail = fail

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        await asyncio.sleep(self.seconds)
        if self.fail:
            raise RuntimeError("model broke")
        return [i * 10 for i in items]


def test_concurrent_items_share_one_run_and_get_their_own_results():
    model = Model()

    async def main():
        batcher = Batcher(model, max_rows=32, wait_s=0.05)
        return await asyncio.gather(*(batcher.submit(i, 1) for i in range(10)))

    assert asyncio.run(main()) == [i * 10 for i in range(10)]
    assert model.batches == [list(range(10))]


def test_items_arriving_one_by_one_after_a_full_batch_are_waited_for():
    model = Model()

    async def main():
        batcher = Batcher(model, max_rows=32, wait_s=0.2)
        await asyncio.gather(*(batcher.submit(i, 1) for i in range(2)))  # requests come together now

        async def late(i):
            await asyncio.sleep(0.02 * i)
            return await batcher.submit(i, 1)

        return await asyncio.gather(*(late(i) for i in range(2, 6)))

    asyncio.run(main())
    assert model.batches == [[0, 1], [2, 3, 4, 5]]


def test_batches_never_exceed_max_rows():
    model = Model()

    async def main():
        batcher = Batcher(model, max_rows=4, wait_s=0.01)
        return await asyncio.gather(*(batcher.submit(i, 2 if i % 2 else 1) for i in range(9)))

    assert asyncio.run(main()) == [i * 10 for i in range(9)]
    sizes = [sum(2 if i % 2 else 1 for i in batch) for batch in model.batches]
    assert max(sizes) <= 4 and sum(sizes) == 13
    assert [i for batch in model.batches for i in batch] == list(range(9))  # in arrival order


def test_a_busy_model_runs_everything_that_queued_meanwhile():
    model = Model(seconds=0.2)

    async def main():
        batcher = Batcher(model, max_rows=32, wait_s=0.0)
        first = asyncio.create_task(batcher.submit(0, 1))
        await asyncio.sleep(0.05)  # the first batch is running now
        later = [asyncio.create_task(batcher.submit(i, 1)) for i in range(1, 8)]
        await asyncio.sleep(0.01)
        return await asyncio.gather(first, *later)

    asyncio.run(main())
    assert model.batches == [[0], list(range(1, 8))]


def test_waiting_is_bounded_and_skipped_when_requests_come_one_at_a_time():
    model = Model()

    async def main():
        batcher = Batcher(model, max_rows=32, wait_s=0.1)
        loop = asyncio.get_running_loop()
        began = loop.time()
        await batcher.submit(1, 1)  # nothing ran before: no reason to wait
        alone = loop.time() - began
        await asyncio.gather(batcher.submit(2, 1), batcher.submit(3, 1))
        began = loop.time()
        await batcher.submit(4, 1)  # the last batch had two rows: waits for company, 0.1 s at most
        return alone, loop.time() - began

    alone, after_pair = asyncio.run(main())
    assert alone < 0.05
    assert 0.09 <= after_pair < 1.0


def test_cancelled_items_are_dropped_and_errors_reach_every_item():
    model = Model(seconds=0.1)

    async def cancelled():
        batcher = Batcher(model, max_rows=32, wait_s=0.0)
        busy = asyncio.create_task(batcher.submit(0, 1))
        await asyncio.sleep(0.02)
        gone = asyncio.create_task(batcher.submit(1, 1))
        kept = asyncio.create_task(batcher.submit(2, 1))
        await asyncio.sleep(0.01)
        gone.cancel()  # e.g. its request timed out while it waited
        return await asyncio.gather(busy, kept)

    assert asyncio.run(cancelled()) == [0, 20]
    assert model.batches == [[0], [2]]

    broken = Model(fail=True)

    async def failing():
        batcher = Batcher(broken, max_rows=32, wait_s=0.01)
        results = await asyncio.gather(*(batcher.submit(i, 1) for i in range(3)), return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in results)
        broken.fail = False
        return await batcher.submit(5, 1)  # the worker survived

    assert asyncio.run(failing()) == 50


@pytest.mark.parametrize("max_rows", [1, 3])
def test_settings_can_change_between_batches(max_rows):
    model = Model()

    async def main():
        batcher = Batcher(model, max_rows=32, wait_s=0.0)
        await batcher.submit(0, 1)
        batcher.max_rows, batcher.wait_s = max_rows, 0.02
        await asyncio.gather(*(batcher.submit(i, 1) for i in range(6)))

    asyncio.run(main())
    assert max(len(b) for b in model.batches[1:]) == max_rows
