"""Summarises the progress messages of a Docker image pull into rate-limited text lines."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

from fliswarm.docker.engine import Engine
from fliswarm.exceptions import DockerAPIError, ImagePullError


__all__ = ["PullProgress", "ensure_image"]

_DONE = ("Pull complete", "Already exists")


class PullProgress:
    """Follows a pull and says, at most every ``interval`` seconds, how far it got.

    Parameters
    ----------
    label
        Prefix of every line (``"gfa1: pulling host:5000/img:tag"``).
    interval
        The least number of seconds between two progress lines.
    clock
        A monotonic clock (for tests).
    """

    def __init__(
        self,
        label: str,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.interval = interval
        self.clock = clock
        self.layers: dict[str, str] = {}
        self.bytes: dict[str, tuple[int, int]] = {}
        self.status = ""
        self._last: float | None = None

    def update(self, item: Mapping[str, Any]) -> str | None:
        """Takes one progress message; returns a line to report, or `None` if not due yet."""

        status = str(item.get("status", ""))
        layer = item.get("id")
        detail = item.get("progressDetail") or {}
        if layer and status and not status.startswith("Pulling from"):
            self.layers[layer] = status
            if status == "Downloading" and detail.get("total"):
                self.bytes[layer] = (int(detail.get("current", 0)), int(detail["total"]))
            elif status in _DONE or status == "Download complete":
                if layer in self.bytes:
                    total = self.bytes[layer][1]
                    self.bytes[layer] = (total, total)
        elif status:
            self.status = status

        now = self.clock()
        if self._last is not None and now - self._last < self.interval:
            return None
        self._last = now
        return self.summary()

    def summary(self) -> str:
        """The current state of the pull, as one line."""

        done = sum(1 for s in self.layers.values() if s in _DONE)
        text = f"{self.label}: {done}/{len(self.layers)} layers done"
        if self.bytes:
            current = sum(c for c, _ in self.bytes.values()) / 1e6
            total = sum(t for _, t in self.bytes.values()) / 1e6
            text += f", {current:.1f}/{total:.1f} MB downloaded"
        if self.status:
            text += f" ({self.status})"
        return text + "."


async def ensure_image(
    engine: Engine,
    ref: str,
    command: Any,
    always: bool = False,
    timeout: float = 600.0,
    interval: float = 1.0,
    *,
    present: bool | None = None,
) -> bool:
    """Pulls an image if it is missing (or ``always``), reporting progress to ``command``.

    Progress goes to ``command.debug`` as text lines, at most every ``interval`` seconds;
    the start and the end of the pull to ``command.info``. ``present`` says whether the
    image is on the engine, if the caller already looked (otherwise it is inspected).

    Returns
    -------
    bool
        Whether a pull was done.

    Raises
    ------
    ImagePullError
        If the image is missing and cannot be pulled (unknown image, registry down,
        timeout). With ``always``, a failed pull of a present image only warns.
    """

    node = engine.node
    if present is None:
        present = (await engine.inspect_image(ref)) is not None
    if present and not always:
        return False

    command.info(text=f"{node}: pulling image {ref}.")
    progress = PullProgress(f"{node}: pulling {ref}", interval)

    async def consume() -> None:
        async for item in engine.pull_image(ref):
            line = progress.update(item)
            if line:
                command.debug(text=line)

    error: str | None = None
    try:
        await asyncio.wait_for(consume(), timeout)
    except asyncio.TimeoutError:
        error = f"did not finish within {timeout:g} s"
    except DockerAPIError as err:
        error = err.message

    if error is None and (await engine.inspect_image(ref)) is None:
        error = "the engine reported no error but the image is not there"
    if error is not None:
        if present:
            command.warning(text=f"{node}: cannot pull {ref} ({error}); using the local image.")
            return False
        raise ImagePullError(node, f"cannot pull image {ref}: {error}")

    command.info(text=f"{node}: pulled image {ref}.")
    return True
