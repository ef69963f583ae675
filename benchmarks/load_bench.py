"""Load on the real fliswarm actor: many concurrent clients, real flicamera actors.

``N`` clients connect to the actor at once and each sends ``M`` commands, one after the other,
cycling through ``status``, ``talk status`` (every camera), ``ping`` and ``talk -n <one>
status``. Every command must end (``:`` or ``f``), every line of a command must reach the
client that sent it with its command id, and no client may see another's command ids. The
run is repeated: between the rounds, the actor's bookkeeping must return to where it was
(device command ids in use, pending sub-commands, users and server transports, CLU command
objects alive) and its memory must stay flat.

The flicamera actors are real (simulated cameras) and run on the host, on loopback; the
nodes have no Docker engine, so supervision is off and ``status`` reports the engines down.
The actor and the clients run in this process.

Run: ``python3 benchmarks/load_bench.py [--clients 20] [--commands 200] [--cameras 3]
[--rounds 3] [--output docs/reliability.md]``. Prints one line per round, a summary and the
claims (`CLAIMS`, checked by `check_claims`); exits 1 when one fails. With ``--output``, and
only when every claim held, it rewrites the "Load held" section of that page (the text between
`BEGIN` and `END`) with the figures and the commit measured. ``tests/test_load.py`` runs a
bounded version and checks the same claims with `check_claims`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import socket
import statistics
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from clu.command import Command

from fliswarm.actor import FLISwarmActor
from fliswarm.config import load_config
from fliswarm_testbed.image import start_flicamera_on_host, wait_flicamera_ready
from fliswarm_testbed.procs import stop_subprocesses


__all__ = ["run_load", "LoadResult", "Round", "check_claims", "CLAIMS", "render_section"]

FINAL = frozenset(":f!")
#: Seconds a command may take before it counts as unfinished.
COMMAND_TIMEOUT = 30.0
#: "Memory flat": RSS after every later round within this of its value after round 1.
MEMORY_FLAT_MIB = 5.0
#: Bookkeeping that must be back to zero after every round: count key -> what it is.
ZERO_AFTER_ROUND = {
    "ids_in_use": "device command ids in use",
    "running": "pending sub-commands",
    "users": "users",
    "server_transports": "server transports",
    "commands_alive": "CLU `Command` objects alive (beyond those alive before the load)",
}
#: What `check_claims` checks, as the page says it.
CLAIMS = [
    f"every command ends with `:` (none fails, none is left unfinished after "
    f"{COMMAND_TIMEOUT:g} s);",
    "every line of a command carries its sender's user id, and no client sees another "
    "client's command id (misrouted 0);",
    "after every round (the warm-up included) the actor's bookkeeping is back where it was: "
    + ", ".join(f"{label} 0" for label in ZERO_AFTER_ROUND.values())
    + ", asyncio tasks back to the count after the warm-up;",
    f"memory flat: the RSS after every later round is within {MEMORY_FLAT_MIB:g} MiB of the "
    "RSS after round 1.",
]
#: The markers around the generated section of ``docs/reliability.md``.
BEGIN = "<!-- begin: written by benchmarks/load_bench.py --output docs/reliability.md -->"
END = "<!-- end: written by benchmarks/load_bench.py -->"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mib() -> float:
    """Resident memory of this process, in MiB."""

    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Round:
    """What one round of load did and left behind."""

    commands: int = 0
    ok: int = 0
    failed: int = 0
    misrouted: int = 0
    unfinished: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    counts: dict[str, float] = field(default_factory=dict)

    def line(self, index: int) -> str:
        lat = sorted(self.latencies) or [0.0]
        p50 = statistics.median(lat) * 1e3
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3
        c = self.counts
        return (
            f"round {index}: {self.commands} commands in {self.seconds:.1f} s "
            f"({self.commands / max(self.seconds, 1e-9):.0f}/s), ok {self.ok}, failed "
            f"{self.failed}, unfinished {self.unfinished}, misrouted {self.misrouted}; latency "
            f"p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {lat[-1] * 1e3:.0f} ms; RSS "
            f"{c['rss_mib']:.1f} MiB, ids in use {c['ids_in_use']:.0f}, pending "
            f"{c['running']:.0f}, users {c['users']:.0f}, transports "
            f"{c['server_transports']:.0f}, Command objects {c['commands_alive']:.0f}, "
            f"tasks {c['tasks']:.0f}"
        )


@dataclass
class LoadResult:
    clients: int
    commands: int
    cameras: int
    baseline: dict[str, float]  # the counts after the warm-up
    rounds: list[Round]
    warmup: Round = field(default_factory=Round)


class _Client:
    """A LegacyActor client that owns the command ids ``base + k``."""

    def __init__(self, base: int) -> None:
        self.base = base
        self.next = base
        self.user_id = -1
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.foreign = 0

    async def connect(self, port: int, timeout: float = 10.0) -> None:
        """Connects and reads the user id the actor gives this client (``yourUserID``)."""

        async def hello() -> None:
            self.reader, self.writer = await asyncio.open_connection(
                "127.0.0.1", port, limit=1 << 22
            )
            while self.user_id < 0:
                parts = (await self._line()).split(" ", 3)
                if len(parts) == 4 and parts[3].startswith("yourUserID="):
                    self.user_id = int(parts[3].split("=")[1].split(";")[0])

        try:
            await asyncio.wait_for(hello(), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"no yourUserID from the actor within {timeout:g} s.") from None

    async def _line(self) -> str:
        assert self.reader is not None
        data = await self.reader.readline()
        if not data:
            raise ConnectionError("the actor closed the connection.")
        return data.decode(errors="replace").rstrip("\n")

    async def command(self, body: str, timeout: float) -> tuple[str | None, bool]:
        """Sends a command; returns its final code (None if it did not end) and whether
        every line of it came with this client's user id."""

        assert self.writer is not None
        mid = self.next
        self.next += 1
        self.writer.write(f"{mid} {body}\n".encode())
        routed = True
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None, routed
            try:
                line = await asyncio.wait_for(self._line(), left)
            except asyncio.TimeoutError:
                return None, routed
            parts = line.split(" ", 3)
            if len(parts) < 3 or not parts[0].isdigit() or not parts[1].isdigit():
                continue
            uid, cid, code = int(parts[0]), int(parts[1]), parts[2]
            if cid == mid:
                routed = routed and uid == self.user_id
                if code in FINAL:
                    return code, routed
            elif cid != 0 and not self.base <= cid < self.base + 100_000:
                self.foreign += 1  # Another client's command id: misrouted.

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.writer.wait_closed(), 2)


def commands_alive() -> int:
    """CLU `Command` objects alive in this process."""

    gc.collect()
    return sum(isinstance(o, Command) for o in gc.get_objects())


#: `commands_alive` when the load started: those of earlier work in the same process (a test
#: session) are not the load's.
_BEFORE = {"commands": 0}


def _counts(actor: FLISwarmActor) -> dict[str, float]:
    gc.collect()
    return {
        "rss_mib": rss_mib(),
        "ids_in_use": sum(d.id_pool.in_use for d in actor.flicameras.values()),
        "running": sum(len(d.running) for d in actor.flicameras.values()),
        "users": len(actor.transports),
        "server_transports": len(actor._server.transports),
        "commands_alive": commands_alive() - _BEFORE["commands"],
        "tasks": len(asyncio.all_tasks()),
    }


async def _round(
    actor: FLISwarmActor, names: list[str], n_clients: int, n_commands: int, offset: int
) -> Round:
    result = Round()
    clients = [_Client((offset + index + 1) * 100_000) for index in range(n_clients)]
    await asyncio.gather(*[client.connect(actor.port) for client in clients])
    bodies = ["status", "talk status", "ping"] + [f"talk -n {name} status" for name in names]

    async def drive(index: int, client: _Client) -> None:
        for k in range(n_commands):
            body = bodies[(index + k) % len(bodies)]
            t0 = time.monotonic()
            code, routed = await client.command(body, timeout=COMMAND_TIMEOUT)
            result.latencies.append(time.monotonic() - t0)
            result.commands += 1
            if code is None:
                result.unfinished += 1
            elif code == ":":
                result.ok += 1
            else:
                result.failed += 1
            if not routed:
                result.misrouted += 1

    t0 = time.monotonic()
    await asyncio.gather(*[drive(index, client) for index, client in enumerate(clients)])
    result.seconds = time.monotonic() - t0
    result.misrouted += sum(client.foreign for client in clients)
    await asyncio.gather(*[client.close() for client in clients])
    for _ in range(500):  # Up to 10 s for the actor to notice the closed connections.
        if not actor.transports:
            break
        await asyncio.sleep(0.02)
    result.counts = _counts(actor)
    return result


async def run_load(
    n_clients: int = 20,
    n_commands: int = 200,
    n_cameras: int = 3,
    rounds: int = 3,
    work_dir: str | os.PathLike[str] | None = None,
    report: Any = print,
    propagate_logs: bool = True,
) -> LoadResult:
    """Runs a warm-up round then ``rounds`` rounds of load; returns the figures.

    With ``propagate_logs=False`` the actor's log records stay out of the root logger (whose
    handlers, e.g. pytest's capture, would keep them all in memory); its log file is kept.
    """

    _BEFORE["commands"] = commands_alive()
    with contextlib.ExitStack() as stack:
        if work_dir is None:
            work_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="fsw-load-"))
        work = Path(work_dir)
        names = [f"gfa{index + 1}" for index in range(n_cameras)]
        ports = {name: _free_port() for name in names}
        procs = [await start_flicamera_on_host(n, p, work / "data") for n, p in ports.items()]
        actor: FLISwarmActor | None = None
        try:
            for port in ports.values():
                await wait_flicamera_ready("127.0.0.1", port, 60)
            closed = _free_port()
            config = {
                "actor": {"name": "fliswarm", "host": "127.0.0.1", "port": _free_port()},
                "image": "sdss/flicamera:latest",
                "status_interval": 3600,
                "timeouts": {"talk": 20, "docker_connect": 0.5, "docker_request": 1},
                "ping_timeout": 0.5,
                "nodes": {
                    name: {
                        "host": "127.0.0.1",
                        "port": port,
                        "category": "gfa",
                        "docker-client": f"tcp://127.0.0.1:{closed}",
                    }
                    for name, port in ports.items()
                },
                "enabled_nodes": names,
            }
            config_path = work / "fliswarm.yaml"
            config_path.write_text(yaml.safe_dump(config))
            actor = FLISwarmActor.from_config(load_config(config_path), log_dir=work / "logs")
            actor.log.propagate = propagate_logs
            await actor.start()
            await actor.supervisor.stop()  # No Docker engines here (see the module).
            warm = await _round(actor, names, n_clients, max(5, n_commands // 10), 0)
            report(warm.line(0) + "  (warm-up)")
            baseline = warm.counts
            done = []
            for index in range(1, rounds + 1):
                one = await _round(actor, names, n_clients, n_commands, index * 1000)
                report(one.line(index))
                done.append(one)
            return LoadResult(n_clients, n_commands, n_cameras, baseline, done, warm)
        finally:
            if actor is not None:
                await actor.stop()
                for handler in list(actor.log.handlers):
                    if isinstance(handler, logging.FileHandler):
                        handler.close()
            await stop_subprocesses(procs)


def warmup_commands(n_commands: int) -> int:
    """Commands per client of the warm-up round."""

    return max(5, n_commands // 10)


def check_claims(result: LoadResult) -> list[str]:
    """What does not hold of `CLAIMS` (empty: every claim held)."""

    failures: list[str] = []
    labelled = [("warm-up", result.warmup, warmup_commands(result.commands))]
    labelled += [(f"round {i}", r, result.commands) for i, r in enumerate(result.rounds, 1)]
    for where, one, per_client in labelled:
        expected = result.clients * per_client
        if one.commands != expected:
            failures.append(f"{where}: {one.commands} commands sent, {expected} expected")
        if one.ok != one.commands or one.failed or one.unfinished:
            failures.append(
                f"{where}: {one.ok} of {one.commands} commands ended with ':' "
                f"({one.failed} failed, {one.unfinished} unfinished)"
            )
        if one.misrouted:
            failures.append(f"{where}: {one.misrouted} misrouted")
        for key, label in ZERO_AFTER_ROUND.items():
            if one.counts.get(key) != 0:
                failures.append(f"{where}: {label} {one.counts.get(key)}, 0 expected")
        if one.counts.get("tasks") != result.baseline["tasks"]:
            failures.append(
                f"{where}: {one.counts.get('tasks')} asyncio tasks, "
                f"{result.baseline['tasks']:g} after the warm-up"
            )
    if len(result.rounds) < 2:
        failures.append("memory flat: needs at least 2 rounds")
    else:
        first = result.rounds[0].counts["rss_mib"]
        for index, one in enumerate(result.rounds[1:], 2):
            growth = one.counts["rss_mib"] - first
            if growth > MEMORY_FLAT_MIB:
                failures.append(
                    f"round {index}: RSS {one.counts['rss_mib']:.1f} MiB, {growth:+.1f} MiB "
                    f"from round 1 (at most {MEMORY_FLAT_MIB:g} MiB)"
                )
    return failures


def _row(label: str, one: Round) -> str:
    lat = sorted(one.latencies) or [0.0]
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    c = one.counts
    books = ", ".join(f"{c[key]:.0f}" for key in [*ZERO_AFTER_ROUND, "tasks"])
    return (
        f"| {label} | {one.commands} | {one.commands / max(one.seconds, 1e-9):.0f}/s | "
        f"{statistics.median(lat) * 1e3:.0f} / {p99 * 1e3:.0f} / {lat[-1] * 1e3:.0f} ms | "
        f"{one.failed}, {one.unfinished}, {one.misrouted} | {books} | {c['rss_mib']:.1f} MiB |"
    )


def _wrap(text: str, first: str = "", rest: str = "") -> list[str]:
    """A paragraph or list item wrapped like the rest of the page (110 columns), never
    inside a `code span`."""

    parts = text.split("`")
    text = "`".join(p.replace(" ", "\0") if i % 2 else p for i, p in enumerate(parts))
    lines = textwrap.wrap(
        text,
        110,
        initial_indent=first,
        subsequent_indent=rest,
        break_long_words=False,
        break_on_hyphens=False,
    )
    return [line.replace("\0", " ") for line in lines]


def render_section(result: LoadResult, revision: str, seconds: float) -> str:
    """The "Load held" section of ``docs/reliability.md`` (between `BEGIN` and `END`)."""

    warm = warmup_commands(result.commands)
    intro = (
        f"`benchmarks/load_bench.py`: {result.clients} clients at once, each sending "
        f"{result.commands} commands one after the other (`status`, `talk status` to "
        f"{result.cameras} real flicamera actors, `ping`, `talk -n gfaN status`), "
        f"{len(result.rounds)} rounds after a warm-up of {warm} commands per client. The nodes "
        "of this benchmark have no Docker engine, so supervision is off and `status` reports "
        "the engines down; the actor and the clients run in one process (its RSS is below)."
    )
    checks = (
        "The script checks these claims and exits non-zero when one fails (and then leaves "
        "this section as it was); `tests/test_load.py` checks the same claims, with the same "
        "function, on a bounded run:"
    )
    measured = (
        f"Measured on commit {revision}, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores "
        f"(load average {os.getloadavg()[0]:.1f} at the end), {seconds:.0f} s in all; every "
        "claim held:"
    )
    lines = ["## Load held", "", *_wrap(intro), "", *_wrap(checks), ""]
    for claim in CLAIMS:
        lines += _wrap(claim, "- ", "  ")
    lines += [
        "",
        *_wrap(measured),
        "",
        "| Round | Commands | Throughput | Latency p50 / p99 / max | Failed, unfinished, "
        "misrouted | Ids in use, pending, users, transports, `Command` objects, tasks | RSS "
        "after |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        _row("warm-up", result.warmup),
        *[_row(str(index), one) for index, one in enumerate(result.rounds, 1)],
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--commands", type=int, default=200, help="Per client and round.")
    parser.add_argument("--cameras", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="After the warm-up; at least 2.")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="a page whose 'Load held' section (between the marker comments) to rewrite, "
        "e.g. docs/reliability.md",
    )
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error("--rounds: at least 2 (memory flatness compares rounds).")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from provenance import ROOT, replace_section, source_revision

    revision = source_revision()
    start = time.monotonic()
    result = asyncio.run(run_load(args.clients, args.commands, args.cameras, args.rounds))
    seconds = time.monotonic() - start
    first, last = result.rounds[0], result.rounds[-1]
    total = sum(r.commands for r in result.rounds)
    bad = sum(r.unfinished + r.misrouted for r in result.rounds)
    growth = last.counts["rss_mib"] - first.counts["rss_mib"]
    print(
        f"summary: {args.clients} clients x {args.commands} commands x {args.rounds} rounds = "
        f"{total} commands, {bad} unfinished or misrouted; RSS {result.baseline['rss_mib']:.1f}"
        f" -> {first.counts['rss_mib']:.1f} -> {last.counts['rss_mib']:.1f} MiB "
        f"({growth:+.1f} MiB over the last rounds); Command objects "
        f"{result.baseline['commands_alive']:.0f} -> {last.counts['commands_alive']:.0f}; "
        f"{seconds:.0f} s, commit {revision}"
    )
    failures = check_claims(result)
    for claim in CLAIMS:
        print(f"claim: {claim}")
    if failures:
        for failure in failures:
            print(f"CLAIM FAILED: {failure}")
        if args.output:
            print(f"{args.output} left as it was.")
        return 1
    print("every claim held.")
    if args.output:
        output = args.output if args.output.is_absolute() else ROOT / args.output
        replace_section(output, BEGIN, END, render_section(result, revision, seconds))
        print(f"wrote the 'Load held' section of {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
