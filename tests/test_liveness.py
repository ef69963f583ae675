"""Liveness of the cameras: a camera that is up but does not answer is found and repaired.

Unit tests of the pure logic first; then, on the real test bed, a frozen camera (its container
paused through the engine API) that fliswarm repairs by itself.
"""

from __future__ import annotations

from fliswarm.camera.device import FlicameraDevice
from fliswarm.camera.subcommand import SubCommand


async def test_busy_while_a_command_is_in_flight():
    device = FlicameraDevice("gfa1", "127.0.0.1", 1)
    assert device.busy is False
    command_id = device.id_pool.get()
    sub = SubCommand("gfa1", command_id, "status", None)
    device.running[command_id] = sub
    assert device.busy is True
    sub._finish(False, "no answer from gfa1 after 10 s.")  # Timed out: kept for its id only.
    assert device.busy is False
    device._end(sub, False)
    assert device.busy is False and not device.running
