"""The floor under a ``talk`` round trip: the least any relaying actor written in Python does.

A server on 127.0.0.1 that reads a command line as the actors get it (``<id> talk -n <node>
<command>``), sends ``<command>`` to flicamera over one kept JSON connection, and writes each
of flicamera's reply lines for that command back as a reply line (``1 <id> <code>
<keywords>``), until the final one. No command parser, no log, no framework, one node. What
it adds to a round trip straight to flicamera is what no actor on this machine can go below;
`benchmarks/scenarios.py` measures it next to both actors' figure (``relay_floor``).

Run as ``python3 relay_floor.py <flicamera host> [<port>]``: it prints the port it listens on,
then serves until killed.
"""

from __future__ import annotations

import asyncio
import json
import sys


async def serve(host: str, port: int = 19995) -> None:
    flicamera_reader, flicamera_writer = await asyncio.open_connection(host, port, limit=2**22)
    command_ids = iter(range(1, 2**31))

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            mid, text = line.decode().rstrip("\n").split(" ", 1)
            command = text.split(" ", 3)[-1]  # talk -n <node> <command>
            cid = next(command_ids)
            flicamera_writer.write(f"{cid} {command}\n".encode())
            while True:
                reply = json.loads(await flicamera_reader.readline())
                header = reply.get("header") or {}
                if header.get("command_id") != cid:
                    continue
                code = header.get("message_code")
                data = reply.get("data") or {}
                keywords = "; ".join(f"{key}={json.dumps(value)}" for key, value in data.items())
                writer.write(f"1 {mid} {code} {keywords}\n".encode())
                if code in (":", "f", "e"):
                    break

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 19995))
