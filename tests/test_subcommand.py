"""`SubCommand` listeners and `wait_all` (pure asyncio logic)."""

from __future__ import annotations

import asyncio
import time

from fliswarm.camera.subcommand import SubCommand, wait_all


def subs(n: int) -> list[SubCommand]:
    return [SubCommand(f"gfa{i + 1}", i + 1, "status", None) for i in range(n)]


async def test_listener_runs_synchronously_and_once():
    sub, calls = subs(1)[0], []
    sub.add_listener(calls.append)
    sub._finish(True)
    assert calls == [sub]  # At once, not at the next iteration.
    sub._finish(False, "late")
    assert calls == [sub] and sub.ok is True and sub.error is None
    sub.add_listener(calls.append)  # Already ended: called at once.
    assert calls == [sub, sub]


async def test_wait_all_returns_when_the_last_one_ends():
    group = subs(3)
    loop = asyncio.get_running_loop()
    loop.call_soon(group[0]._finish, True)
    loop.call_later(0.05, group[2]._finish, False, "broken")
    loop.call_later(0.1, group[1]._finish, True)
    start = time.monotonic()
    await wait_all(group, timeout=60)
    assert time.monotonic() - start < 20  # At the last end (0.1 s), not at the timeout (60 s).
    assert [sub.ok for sub in group] == [True, True, False]
    assert group[2].error == "broken"


async def test_wait_all_fails_the_late_ones_after_the_timeout():
    group = subs(2)
    asyncio.get_running_loop().call_soon(group[0]._finish, True)
    start = time.monotonic()
    await wait_all(group, timeout=0.2)
    assert 0.15 < time.monotonic() - start < 5  # At the timeout (0.2 s): not before, no hang.
    assert group[0].ok is True
    assert group[1].ok is False and group[1].error == "no answer from gfa2 after 0.2 s."
    assert group[1].future.done()


async def test_wait_all_with_nothing_running_and_cancelled():
    done = subs(1)
    done[0]._finish(True)
    await asyncio.wait_for(wait_all(done, timeout=None), 10)  # At once: does not hang.

    group = subs(1)
    task = asyncio.ensure_future(wait_all(group, timeout=None))
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled() and not group[0].future.done()  # Cancelling does not fail them.
    group[0]._finish(True)  # Its listener outlived the wait harmlessly.
    assert group[0].ok is True
