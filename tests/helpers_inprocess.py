"""An in-process fliswarm actor with no server, and a transport that records what it gets.

For tests that compare what the actor writes with what CLU writes, line by line.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fliswarm.actor import FLISwarmActor


class UserTransport:
    """Collects what the actor writes to one user (stands for an asyncio transport)."""

    def __init__(self, user_id: int = 1) -> None:
        self.user_id = user_id
        self.data: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.data.append(data)

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default


@contextlib.contextmanager
def offline_actor(log_dir: Path | str) -> Iterator[FLISwarmActor]:
    """A `FLISwarmActor` (no status loop, not started) logging to ``log_dir``."""

    config = {"actor": {"name": "fliswarm", "host": "127.0.0.1", "port": 0}, "status_interval": 0}
    # A CLU actor made outside a running loop creates a loop of its own, which nothing would
    # close (a ResourceWarning in whichever later test the garbage collector runs): give it
    # one, closed at the end.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        actor = FLISwarmActor.from_config(config, log_dir=log_dir)
        try:
            yield actor
        finally:
            for handler in list(actor.log.handlers):
                handler.close()
    finally:
        asyncio.set_event_loop(None)
        loop.close()
