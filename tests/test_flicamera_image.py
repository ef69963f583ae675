"""The real flicamera actor with a simulated camera: on the host, and as an offline image."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

from astropy.io import fits

from fliswarm.testbed.image import start_flicamera_on_host, wait_flicamera_ready


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def command(
    host: str, port: int, cmd_id: int, text: str, timeout: float = 20.0
) -> list[dict[str, Any]]:
    """Sends one command to a CLU JSON actor; returns its replies up to ``:`` or ``f``."""

    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    replies: list[dict[str, Any]] = []
    try:
        writer.write(f"{cmd_id} {text}\n".encode())
        await writer.drain()
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            line = await asyncio.wait_for(reader.readline(), max(left, 0.01))
            assert line, f"connection closed before {text!r} finished: {replies}"
            reply = json.loads(line)
            if reply["header"]["command_id"] != cmd_id:
                continue  # a broadcast
            replies.append(reply)
            if reply["header"]["message_code"] in (":", "f", "e"):
                return replies
    finally:
        writer.close()


def keyword(replies: list[dict[str, Any]], key: str) -> Any:
    values = [r["data"][key] for r in replies if key in r["data"]]
    assert values, f"no {key!r} keyword in {replies}"
    return values[-1]


async def check_flicamera(host: str, port: int, name: str, data_dir: Path) -> Path:
    """Checks ``status`` and ``expose 0.1`` on a running flicamera; returns the FITS path."""

    replies = await command(host, port, 1, "status")
    assert replies[-1]["header"]["message_code"] == ":"
    status = keyword(replies, "status")
    assert status["camera"] == name
    assert status["serial"].startswith("ML")
    assert status["temperature_ccd"] == -25.0

    replies = await command(host, port, 2, "expose 0.1")
    assert replies[-1]["header"]["message_code"] == ":", replies
    filename = keyword(replies, "filename")
    assert filename["camera"] == name
    path = Path(filename["filename"])
    assert name in path.name
    return path


def check_fits(path: Path, name: str) -> None:
    assert path.is_file(), path
    with fits.open(path) as hdus:
        image = hdus[-1]
        assert image.data.shape == (256, 256)
        assert 900 < float(image.data.mean()) < 1100  # gaussian noise around 1000
        headers = [repr(h.header) for h in hdus]
        assert any(name in h for h in headers)


async def test_flicamera_launcher_on_host(tmp_path: Path) -> None:
    port = free_port()
    proc = await start_flicamera_on_host("gfa9", port, tmp_path)
    try:
        await wait_flicamera_ready("127.0.0.1", port, timeout=60)
        path = await check_flicamera("127.0.0.1", port, "gfa9", tmp_path)
        assert path.is_relative_to(tmp_path)
        check_fits(path, "gfa9")
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.wait(), 20)
