"""The reading side of a flicamera connection: an asyncio protocol that splits lines.

`ReplyStream` hands each complete line to its `.FlicameraDevice` as soon as it arrives (no
reader task woken for each piece of data), drops lines longer than the limit, and tells the
device when the connection ends.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    from fliswarm.device import FlicameraDevice


__all__ = ["ReplyStream"]

log = logging.getLogger("fliswarm.device")


class ReplyStream(asyncio.Protocol):
    """flicamera's side of the connection: splits what arrives into lines and hands each to
    the device at once (no reader task to wake up for every piece of data).

    A line longer than ``limit`` bytes is dropped (with one warning), whole or in pieces.
    ``ended`` is resolved with the reason when the connection ends.
    """

    def __init__(self, device: FlicameraDevice, limit: int) -> None:
        self.device: FlicameraDevice | None = device
        self.limit = limit
        self.transport: asyncio.Transport | None = None
        self.ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._buffer = bytearray()
        self._discarding = False  # Inside a line too long: drop until its end.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        while (end := buffer.find(b"\n", start)) >= 0:
            line = bytes(buffer[start : end + 1])
            start = end + 1
            if self._discarding or len(line) > self.limit:
                self._drop()
                self._discarding = False
                continue
            device = self.device
            if device is None:  # Detached: the connection is being closed.
                continue
            try:
                device.handle_line(line)
            except Exception:
                log.exception("%s: failed relaying %r", device.name, line[:200])
        del buffer[:start]
        if len(buffer) > self.limit:
            self._drop()
            self._discarding = True
            buffer.clear()

    def _drop(self) -> None:
        if not self._discarding and self.device is not None:
            log.warning("%s: dropped a reply line too long.", self.device.name)

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is None:
            reason = "the connection to flicamera was closed by the remote end."
        else:
            reason = f"the connection to flicamera was lost ({exc})."
        if not self.ended.done():
            self.ended.set_result(reason)
        device, self.device = self.device, None
        if device is not None:
            device._lost(self, reason)
