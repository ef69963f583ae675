"""pytest fixtures that start real tron hubs on loopback and connect clients to them.

Use them from a test module or a ``conftest.py`` with::

    from fliswarm_testbed.tron_fixtures import tron_client_factory, tron_hub_factory  # noqa: F401
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from fliswarm_testbed.tron import TronClient, TronHub


__all__ = ["tron_hub_factory", "tron_client_factory", "HubFactory", "ClientFactory"]

HubFactory = Callable[..., Awaitable[TronHub]]
ClientFactory = Callable[..., Awaitable[TronClient]]


@pytest.fixture
async def tron_hub_factory(tmp_path: Path) -> AsyncIterator[HubFactory]:
    """Starts tron hubs; every hub started is stopped (SIGTERM, then SIGKILL) after the test.

    ``await tron_hub_factory({"fliswarm": ("127.0.0.1", port)}, **kwargs)`` returns a ready
    `TronHub`; ``kwargs`` go to `TronHub.start` (``timeout``, ``fast_accept``, ``port``...).
    Logs and configuration go to ``tmp_path/tron<N>``.
    """

    hubs: list[TronHub] = []

    async def factory(
        actors: Mapping[str, tuple[str, int]] | None = None, **kwargs: Any
    ) -> TronHub:
        kwargs.setdefault("log_dir", tmp_path / f"tron{len(hubs) + 1}")
        hub = await TronHub.start(actors, **kwargs)
        hubs.append(hub)
        return hub

    try:
        yield factory
    finally:
        for hub in reversed(hubs):
            await hub.stop()


@pytest.fixture
async def tron_client_factory() -> AsyncIterator[ClientFactory]:
    """Connects `TronClient` objects to a hub; all are closed after the test.

    ``await tron_client_factory(hub)`` or ``await tron_client_factory(hub, program="me")``.
    """

    clients: list[TronClient] = []

    async def factory(hub: TronHub, timeout: float = 10.0, program: str = "fstest") -> TronClient:
        client = await hub.client(timeout=timeout, program=program)
        clients.append(client)
        return client

    try:
        yield factory
    finally:
        for client in clients:
            with contextlib.suppress(Exception):
                await client.close()
