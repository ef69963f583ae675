"""The actor's TCP server: CLU's `~clu.protocol.TCPStreamServer` without its leaks.

CLU 2.6's ``TCPStreamServer.connection_made`` only catches ``IncompleteReadError`` and
``ConnectionResetError`` around ``readuntil()``. A client that connects and closes at once
(the greeting written to it fails with ``BrokenPipeError``), a line longer than the stream
limit (``LimitOverrunError``) or a command whose handler raises (e.g. an unbalanced quote
makes ``shlex.split`` raise ``ValueError``) end the handler with an exception: the
transport stays in ``transports`` (and the user in the actor's ``transports``) forever,
later broadcasts write to a dead socket, and the loop's exception handler logs a traceback.

`SafeStreamServer` keeps CLU's protocol (same callbacks, same ``transports``) but:

- a connection error ends the connection quietly (one debug line);
- a line longer than ``line_limit`` is dropped and reported through ``overflow_callback``
  with its first bytes (so the command can fail with its own command id);
- an exception in the data callback is logged in one line and the connection goes on;
- whatever happens, the transport is forgotten and the disconnect callback is called.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from clu.protocol import TCPStreamServer


__all__ = ["SafeStreamServer", "DEFAULT_COMMAND_LINE_LIMIT"]

#: Longest command line accepted by the actor, in bytes (asyncio's default stream limit).
DEFAULT_COMMAND_LINE_LIMIT = 64 * 1024
#: How many bytes of an overlong line are passed to ``overflow_callback``.
_HEAD = 256

OverflowCallback = Callable[[Any, bytes, int], Any]


class SafeStreamServer(TCPStreamServer):
    """A `~clu.protocol.TCPStreamServer` whose connections never leak (see the module).

    Parameters
    ----------
    args, kwargs
        As `~clu.protocol.TCPStreamServer`.
    log
        Where to report dropped lines and failed callbacks.
    line_limit
        Longest line accepted, in bytes.
    overflow_callback
        Called with ``(transport, head, size)`` when a line longer than ``line_limit``
        was dropped; ``head`` is its beginning, ``size`` its length.
    """

    def __init__(
        self,
        *args: Any,
        log: logging.Logger | None = None,
        line_limit: int = DEFAULT_COMMAND_LINE_LIMIT,
        overflow_callback: OverflowCallback | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.log = log or logging.getLogger("fliswarm.server")
        self.line_limit = line_limit
        self.overflow_callback = overflow_callback

    async def connection_made(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Serves one client until it goes; never raises, never leaks its transport."""

        transport = writer.transport
        if self.max_connections and len(self.transports) >= self.max_connections:
            with contextlib.suppress(Exception):
                writer.write(b"Max number of connections reached.\n")
                writer.close()
            return

        self.transports[transport] = writer
        try:
            if self.connection_callback:
                await self._do_callback(self.connection_callback, transport)
            await self._serve(reader, transport)
        except (ConnectionError, asyncio.IncompleteReadError) as err:
            self.log.debug(f"client {_peer(transport)} went away: {err!r}")
        except Exception as err:
            self.log.warning(f"client {_peer(transport)}: connection ended by {err!r}")
        finally:
            self.transports.pop(transport, None)
            with contextlib.suppress(Exception):
                writer.close()
            if self.connection_callback:
                try:
                    await self._do_callback(self.connection_callback, transport)
                except Exception as err:
                    self.log.warning(f"client {_peer(transport)}: disconnect failed: {err!r}")
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, transport: Any) -> None:
        # The reader's own limit is asyncio's default (64 KiB); longer lines are read in
        # pieces and dropped here.
        head = b""
        size = 0
        while True:
            try:
                data = await reader.readuntil(b"\n")
            except asyncio.LimitOverrunError as err:
                chunk = await reader.readexactly(err.consumed)
                if size == 0:
                    head = chunk[:_HEAD]
                size += len(chunk)
                continue
            except asyncio.IncompleteReadError:
                return
            if size or len(data) > self.line_limit:
                if size == 0:
                    head = data[:_HEAD]
                size += len(data)
                await self._overflow(transport, head, size)
                head, size = b"", 0
                continue
            if not data:
                return
            if self.data_received_callback:
                try:
                    await self._do_callback(self.data_received_callback, transport, data)
                except Exception as err:
                    self.log.warning(f"client {_peer(transport)}: dropped {data[:200]!r}: {err!r}")

    async def _overflow(self, transport: Any, head: bytes, size: int) -> None:
        self.log.warning(f"client {_peer(transport)}: dropped a {size}-byte line {head[:60]!r}")
        if self.overflow_callback:
            try:
                await self._do_callback(self.overflow_callback, transport, head, size)
            except Exception as err:
                self.log.warning(f"client {_peer(transport)}: overflow callback failed: {err!r}")


def _peer(transport: Any) -> str:
    peer = transport.get_extra_info("peername") if transport is not None else None
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return "?"
