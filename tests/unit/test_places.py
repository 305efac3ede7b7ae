"""`targets.places.Places` keeps `asyncio.Semaphore`'s rules: first come first served, a freed
place handed to the longest waiter, a place handed to a waiter cancelled before it ran passed on."""

from __future__ import annotations

import asyncio
import random

import pytest

from jobwire.targets.places import Places


async def test_take_until_none_is_free_then_wait_in_line() -> None:
    places = Places(2)
    assert places.take() and places.take()
    assert not places.take() and places.locked() and places.free == 0
    order: list[int] = []

    async def waiter(n: int) -> None:
        await places.acquire()
        order.append(n)

    tasks = [asyncio.create_task(waiter(n)) for n in range(3)]
    await asyncio.sleep(0)  # all three are waiting now
    assert order == []
    places.release()
    assert not places.take(), "a freed place goes to the first waiter, never to a newcomer"
    places.release()
    places.release()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2]
    assert places.free == 0 and not places._waiters
    places.release()
    places.release()
    assert places.free == 2 and not places.locked()


async def test_a_waiter_cancelled_while_waiting_leaves_the_line() -> None:
    places = Places(1)
    assert places.take()
    first = asyncio.create_task(places.wait())
    second = asyncio.create_task(places.wait())
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    places.release()
    await asyncio.wait_for(second, 1)  # the place went to the one still waiting
    assert places.free == 0 and not places._waiters


async def test_a_place_handed_to_a_cancelled_waiter_is_passed_on() -> None:
    places = Places(1)
    assert places.take()
    first = asyncio.create_task(places.wait())
    second = asyncio.create_task(places.wait())
    await asyncio.sleep(0)
    places.release()  # handed to `first`, which has not run since
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 1)
    places.release()
    assert places.free == 1 and not places._waiters


async def test_a_cancelled_waiter_dropped_by_release_is_not_removed_twice() -> None:
    places = Places(0)
    waiter = asyncio.create_task(places.wait())
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.sleep(0)  # the waiter's future is cancelled; its task has not handled it yet
    places.release()  # finds the cancelled future first and drops it: the place goes to `free`
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert places.free == 1 and not places._waiters


@pytest.mark.parametrize("seed", range(20))
async def test_same_grants_as_asyncio_semaphore(seed: int) -> None:
    """A random sequence of takes, releases and cancels against both: the same callers get a
    place, in the same order, and the same number is free at the end."""
    rng = random.Random(seed)
    script = [rng.choice(("get", "get", "put", "cancel")) for _ in range(200)]

    async def play(acquire_of: object, release: object) -> tuple[list[int], int]:
        granted: list[int] = []
        waiting: dict[int, asyncio.Task[None]] = {}
        held = 0

        async def caller(n: int) -> None:
            await acquire_of()  # type: ignore[operator]
            granted.append(n)

        for n, step in enumerate(script):
            if step == "get":
                waiting[n] = asyncio.create_task(caller(n))
            elif step == "put" and held > 0:
                held -= 1
                release()  # type: ignore[operator]
            elif step == "cancel" and waiting:
                victim = rng.choice(sorted(waiting))
                waiting.pop(victim).cancel()
            for _ in range(3):
                await asyncio.sleep(0)
            for k in [k for k, t in waiting.items() if t.done()]:
                task = waiting.pop(k)
                if not task.cancelled():
                    held += 1
        for task in waiting.values():
            task.cancel()
        await asyncio.gather(*waiting.values(), return_exceptions=True)
        return granted, held

    rng = random.Random(seed)
    semaphore = asyncio.Semaphore(3)
    expected = await play(semaphore.acquire, semaphore.release)
    rng = random.Random(seed)
    places = Places(3)
    got = await play(places.acquire, places.release)
    assert got == expected
