"""`fliswarm.server.ClientTransport`: lines written in one loop iteration leave in one write."""

from __future__ import annotations

import asyncio

from fliswarm.server import ClientTransport, SafeStreamServer


class RecordingTransport:
    """Records every ``write`` it receives (a unit-test stand-in for an asyncio transport)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 1234) if name == "peername" else default


async def test_first_line_at_once_the_rest_of_the_burst_in_one_write():
    raw = RecordingTransport()
    transport = ClientTransport(raw)  # type: ignore[arg-type]
    lines = [f"1 {i} i n={i}\n".encode() for i in range(5)]
    for line in lines:
        transport.write(line)
    assert raw.writes == [lines[0]]  # No delay for the first line of a burst.
    await asyncio.sleep(0)
    assert raw.writes == [lines[0], b"".join(lines[1:])]  # The rest, in order, in one write.

    transport.write(b"1 9 : \n")  # A new iteration: a new burst, written at once.
    assert raw.writes[-1] == b"1 9 : \n" and len(raw.writes) == 3
    await asyncio.sleep(0)
    assert len(raw.writes) == 3


async def test_close_sends_pending_lines_first_and_closed_drops():
    raw = RecordingTransport()
    transport = ClientTransport(raw)  # type: ignore[arg-type]
    transport.write(b"a\n")
    transport.write(b"b\n")
    transport.write(b"c\n")
    transport.close()
    assert raw.writes == [b"a\n", b"b\nc\n"] and raw.closed and transport.is_closing()
    transport.write(b"late\n")
    await asyncio.sleep(0)
    assert raw.writes == [b"a\n", b"b\nc\n"]  # Written to a closed connection: dropped.


async def test_user_id_absent_until_set_like_a_plain_transport():
    transport = ClientTransport(RecordingTransport())  # type: ignore[arg-type]
    assert not hasattr(transport, "user_id")  # CLU's new_user checks hasattr.
    transport.user_id = 3
    assert transport.user_id == 3
    assert transport.get_extra_info("peername") == ("127.0.0.1", 1234)


async def test_server_gives_callbacks_one_client_transport_per_connection():
    seen: list[object] = []

    def on_line(transport: ClientTransport, line: bytes) -> None:
        seen.append(transport)
        for word in line.split():
            transport.write(word + b"\n")

    server = SafeStreamServer("127.0.0.1", 0, data_received_callback=on_line)
    listening = await server.start()
    port = listening.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"one two three\nfour\n")
        got = b""
        while got.count(b"\n") < 4:
            got += await asyncio.wait_for(reader.read(1024), 5)
        assert got == b"one\ntwo\nthree\nfour\n"
        assert len(seen) == 2 and seen[0] is seen[1] and isinstance(seen[0], ClientTransport)
    finally:
        writer.close()
        server.stop()
