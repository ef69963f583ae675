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

The callbacks get a `ClientTransport` for each client: the lines written to it in a burst
(one iteration of the event loop) leave in at most two ``send()`` calls, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from clu.protocol import TCPStreamServer


__all__ = ["SafeStreamServer", "ClientTransport", "DEFAULT_COMMAND_LINE_LIMIT"]

#: Longest command line accepted by the actor, in bytes (asyncio's default stream limit).
DEFAULT_COMMAND_LINE_LIMIT = 64 * 1024
#: How many bytes of an overlong line are passed to ``overflow_callback``.
_HEAD = 256

OverflowCallback = Callable[[Any, bytes, int], Any]


class ClientTransport:
    """A client's transport that joins the lines written in one burst into one send.

    Every reply line is one ``write``; asyncio would make each a ``send()`` system call.
    Here the first write of an iteration of the event loop goes out at once (no added
    delay), and the ones after it in the same iteration are joined and sent, in order, at
    the start of the next iteration (``call_soon``): a ``talk`` to seven cameras writing a
    dozen lines costs two sends. `close` sends what is pending first.

    The actor sets ``user_id`` (and CLU's ``multiline``) on it, as on a plain transport;
    ``user_id`` does not exist until then (CLU checks ``hasattr``).

    Parameters
    ----------
    transport
        The connection's `asyncio.Transport`.
    """

    __slots__ = ("transport", "user_id", "multiline", "_pending", "_burst", "_loop")

    def __init__(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport
        self._pending: list[bytes] = []
        self._burst = False  # Something was written in this iteration of the loop.
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes) -> None:
        """Sends ``data`` now, or with the rest of this burst at the next iteration."""

        if self._burst:
            self._pending.append(data)
            return
        self._burst = True
        self._loop.call_soon(self.flush)
        if not self.transport.is_closing():
            self.transport.write(data)

    def flush(self) -> None:
        """Sends what is queued now; the next write starts a new burst."""

        self._burst = False
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        if not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        """Sends what is queued, then closes the connection."""

        self.flush()
        self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.transport.get_extra_info(name, default)

    def __repr__(self) -> str:
        return f"<ClientTransport user_id={getattr(self, 'user_id', None)} {self.transport!r}>"


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

        if self.max_connections and len(self.transports) >= self.max_connections:
            with contextlib.suppress(Exception):
                writer.write(b"Max number of connections reached.\n")
                writer.close()
            return

        self.transports[writer.transport] = writer
        transport = ClientTransport(writer.transport)
        try:
            if self.connection_callback:
                await self._do_callback(self.connection_callback, transport)
            await self._serve(reader, transport)
        except (ConnectionError, asyncio.IncompleteReadError) as err:
            self.log.debug(f"client {_peer(transport)} went away: {err!r}")
        except Exception as err:
            self.log.warning(f"client {_peer(transport)}: connection ended by {err!r}")
        finally:
            self.transports.pop(writer.transport, None)
            with contextlib.suppress(Exception):
                transport.close()
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
