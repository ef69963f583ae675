"""``logs``: the last lines of the flicamera containers' output, read from their engines."""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

import click

from fliswarm.commands import parser
from fliswarm.exceptions import NodeError
from fliswarm.tools import select_nodes, split_names


if TYPE_CHECKING:
    from fliswarm.commands import FLISwarmCommand, NodesType


__all__ = ["logs", "MAX_TAIL", "MAX_BYTES", "MAX_LINE", "cap_lines", "keyword_text"]

#: The most lines ``--tail`` may ask for, per node.
MAX_TAIL = 1000

#: The most log text relayed per node, in bytes (UTF-8): older lines beyond are not relayed
#: (and the reply says so).
MAX_BYTES = 64 * 1024

#: The longest log line relayed, in characters: the rest of a longer line is cut (and marked).
MAX_LINE = 2000

#: Characters that would break a reply line (its end, or a line end to tron's parsers).
_BREAKING = dict.fromkeys(map(ord, "\r\x00\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"), " ")


def keyword_text(line: str) -> str:
    """A log line as a keyword value: one JSON string, which CLU writes as it is.

    CLU quotes a string only when it has a space; a log line with a ``;`` or a ``"`` and no
    space, or an empty one, would break the reply line. The JSON string keeps every character
    (control characters escaped), so ``json.loads`` of the value gives the line back.
    """

    return json.dumps(line.translate(_BREAKING), ensure_ascii=False)


def cap_lines(
    lines: list[str], max_bytes: int = MAX_BYTES, max_line: int = MAX_LINE
) -> tuple[list[str], int, int]:
    """The newest lines that fit in ``max_bytes``, each at most ``max_line`` characters.

    Returns
    -------
    tuple
        The lines kept (oldest first), how many older lines were left out, and how many
        lines were cut to ``max_line`` characters (marked with ``[... N more characters]``).
    """

    kept: list[str] = []
    size = 0
    shortened = 0
    for line in reversed(lines):
        cut = len(line) > max_line
        if cut:
            line = f"{line[:max_line]} [... {len(line) - max_line} more characters]"
        size += len(line.encode("utf-8", errors="replace")) + 1
        if size > max_bytes:
            break
        kept.append(line)
        shortened += cut
    kept.reverse()
    return kept, len(lines) - len(kept), shortened


def _selected(
    command: FLISwarmCommand, nodes: NodesType, names: str | None, category: str | None
) -> list[str]:
    """Named nodes (enabled or not), plus the enabled nodes of the category; all enabled
    nodes when neither is given."""

    chosen: list[str] = []
    for name in split_names(names):
        if name in nodes:
            chosen.append(name)
        else:
            command.warning(text=f"{name}: no such node.")
    if category is not None or names is None:
        chosen += [node.name for node in select_nodes(nodes, category, None)]
    return sorted(set(chosen))


def _state(info: dict[str, Any]) -> tuple[bool, str]:
    """Whether the container runs, and its state in words."""

    state = info.get("State") or {}
    status = str(state.get("Status") or "unknown")
    if state.get("Running") and not state.get("Restarting"):
        return True, "running"
    if status in ("exited", "dead"):
        when = str(state.get("FinishedAt") or "")
        at = (
            f" at {when[:19].replace('T', ' ')} UTC"
            if when and not when.startswith("0001")
            else ""
        )
        return False, f"{status} with code {state.get('ExitCode')}{at}"
    return False, status


async def _one(
    command: FLISwarmCommand, nodes: NodesType, name: str, tail: int, since: float | None
) -> bool:
    """Relays one node's lines; says why it cannot. Whether the log was read."""

    actor = command.actor
    node = nodes[name]
    engine = node.engine
    container = actor.get_container_name(name)
    # Two calls (inspect, then the log), each bounded by the node's Docker timeouts.
    limit = 2 * (node.connect_timeout + node.request_timeout) + 1.0
    started = time.time()
    try:
        async with asyncio.timeout(limit):
            info = await engine.inspect_container(container)
            if info is None:
                lines = None
            else:
                after = started - since if since is not None else None
                lines = await engine.container_logs(container, tail=tail, since=after)
    except NodeError as err:  # Before TimeoutError: `.NodeTimeoutError` is one.
        command.warning(text=f"{name}: cannot read the log of {container}: {err.message}")
        return False
    except TimeoutError:
        command.warning(
            text=f"{name}: no log of {container} within {limit:g} s: its Docker engine answers "
            "too slowly (check the node's load, or restart dockerd on it)."
        )
        return False
    if info is None or lines is None:
        command.warning(
            text=f"{name}: there is no container {container} on the node, so no log: it was "
            f"removed or never created (fliswarm reconnect -n {name} creates it)."
        )
        return False

    running, words = _state(info)
    kept, dropped, shortened = cap_lines(lines)
    during = f" in the last {since:g} s" if since is not None else ""
    if not kept:
        head = f"{name}: {container} ({words}) has written no log lines{during}."
    else:
        count = f"{len(kept)} log lines" if len(kept) != 1 else "log line"
        head = f"{name}: {container} ({words}): its last {count}{during}."
    if running:
        command.info(text=head)
    else:
        command.warning(text=head)
    if dropped:
        command.warning(
            text=f"{name}: the log is cut to its last {MAX_BYTES // 1024} KiB: {dropped} older "
            "lines are not shown."
        )
    if shortened:
        command.warning(
            text=f"{name}: {shortened} lines longer than {MAX_LINE} characters are cut."
        )
    for line in kept:
        command.info(containerLog=[name, keyword_text(line)])
    return True


@parser.command()
@click.option(
    "-n",
    "--names",
    type=str,
    help="Comma-separated nodes (disabled ones too: their containers are only read).",
)
@click.option("-c", "--category", type=str, help="Category of enabled nodes (gfa, fvc).")
@click.option(
    "--tail",
    type=click.IntRange(1, MAX_TAIL),
    default=20,
    show_default=True,
    help=f"How many of the last lines of each container to relay (at most {MAX_TAIL}).",
)
@click.option(
    "--since",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Only the lines written in the last SECONDS seconds (the node's clock against "
    "fliswarm's).",
)
async def logs(
    command: FLISwarmCommand,
    nodes: NodesType,
    names: str | None,
    category: str | None,
    tail: int,
    since: float | None,
):
    """Relays the last lines of the flicamera containers' output (docker logs), per node.

    Each line is a containerLog keyword, {node, line}, oldest first, after a text line that
    says what the container is doing. Without -n and -c, every enabled node is read. The
    nodes are read at once, and a node's lines are written as soon as its engine answers: a
    node that does not answer delays only its own report, bounded by its Docker timeouts. A
    stopped container gives its last lines while the engine keeps them (until the container
    is removed); a missing one is said. At most 64 KiB of text per node: older lines beyond
    are left out, and the reply says so. Fails only if no node's log could be read.
    """

    selected = _selected(command, nodes, names, category)
    if not selected:
        return command.fail(error="No node matches the selection.")

    results = await asyncio.gather(*[_one(command, nodes, name, tail, since) for name in selected])
    failed = [name for name, ok in zip(selected, results, strict=True) if not ok]
    if len(failed) == len(selected):
        return command.fail(error=f"Could not read the log of {', '.join(failed)}.")
    return command.finish()
