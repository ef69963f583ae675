"""``fliswarm demo``: the whole job on one machine, shown through tron like an operator sees it.

Brings up a simulated site (the `.testbed` nodes and registry, the simulated flicamera image,
a real tron hub on loopback), starts fliswarm as a daemon with the real CLI, and then runs
``reconnect``, ``status``, ``talk expose 0.1`` and a container kill healed by the supervisor,
all through tron. Everything it starts is recorded under ``/var/lib/fliswarm-demo/<instance>``
and ``fliswarm demo down`` removes it all (daemon, tron, test bed).

The tron hub must outlive the ``demo`` command: it runs under a small keeper process
(``python3 -m fliswarm_testbed.demo _tron ...``, its own session) that stops it on SIGTERM;
tron dies with its keeper if the keeper is killed. Process handling and clean-up live in
`.demo_procs`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from fliswarm_testbed.demo_procs import (
    STATE_ROOT,
    DemoError,
    DemoPaths,
    alive,
    fliswarm_cli,
    keep_tron,
    start_tron,
    stop_demo,
    stop_processes,
)


__all__ = [
    "demo",
    "DemoError",
    "DemoPaths",
    "run_demo",
    "stop_demo",
    "stop_processes",
    "start_tron",
    "STATE_ROOT",
]

T = TypeVar("T")


class Demo:
    """One run of the demo; `run` does the steps, printing progress with ``say``."""

    def __init__(self, instance: int, n_nodes: int, say: Callable[[str], None] = print):
        self.paths = DemoPaths(instance)
        self.instance = instance
        self.n_nodes = n_nodes
        self.say = say
        self.t0 = time.monotonic()
        self.bed: Any = None
        self.client: Any = None
        self.image = ""
        self.summary: dict[str, Any] = {}

    async def step(self, name: str, timeout: float, func: Callable[[], Awaitable[T]]) -> T:
        """Runs one step within ``timeout`` seconds; failures raise `DemoError` naming it."""

        self.say(f"==> [{time.monotonic() - self.t0:6.1f} s] {name}")
        start = time.monotonic()
        try:
            result = await asyncio.wait_for(func(), timeout)
        except asyncio.TimeoutError:
            raise DemoError(f"step '{name}' timed out after {timeout:g} s.") from None
        except DemoError as err:
            raise DemoError(f"step '{name}' failed: {err}") from None
        except Exception as err:
            raise DemoError(f"step '{name}' failed: {type(err).__name__}: {err}") from err
        self.say(f"    done in {time.monotonic() - start:.1f} s")
        self.summary.setdefault("steps", {})[name] = round(time.monotonic() - start, 2)
        return result

    def show(self, line: Any) -> None:
        body = line.body if len(line.body) < 200 else line.body[:197] + "..."
        self.say(f"    {line.actor} {line.code} {body}")

    async def run(self) -> dict[str, Any]:
        await self.step("clean up a previous demo", 90, self._previous)
        await self.step(f"test bed up ({self.n_nodes} nodes, registry)", 180, self._bed_up)
        await self.step("flicamera simulation image (built or cached, pushed)", 1200, self._image)
        await self.step("pull the image on every node", 240, self._pull)
        await self.step("tron hub on loopback", 60, self._tron)
        await self.step("fliswarm daemon (fliswarm start)", 90, self._daemon)
        await self.step("fliswarm registered with tron", 60, self._registered)
        try:
            await self.step("reconnect: a camera on every node", 240, self._reconnect)
            await self.step("status", 60, self._status)
            await self.step("talk expose 0.1 on all cameras", 90, self._expose)
            await self.step("kill a flicamera container, supervisor heals it", 90, self._heal)
        finally:
            await self.client.close()
        self.summary["seconds"] = round(time.monotonic() - self.t0, 1)
        return self.summary

    async def _previous(self) -> None:
        await asyncio.to_thread(stop_processes, self.paths, lambda s: self.say("    " + s))

    async def _bed_up(self) -> None:
        from fliswarm_testbed.bed import Testbed

        def up() -> Any:
            bed = Testbed(self.instance, n_nodes=self.n_nodes)
            if bed.is_up() and len(bed._state()["names"]) != self.n_nodes:
                Testbed(self.instance).down()
            bed.up(timeout=60)
            return bed

        self.bed = await asyncio.to_thread(up)
        names = ", ".join(f"{n.name} {n.addr}" for n in self.bed.nodes)
        self.say(f"    nodes: {names}; registry {self.bed.registry}")

    async def _image(self) -> None:
        from fliswarm_testbed.image import build_flicamera_image

        def progress(line: str) -> None:
            self.say(f"    [{time.monotonic() - self.t0:6.1f} s] {line.strip()}")

        build = await asyncio.to_thread(
            build_flicamera_image, self.bed.registry, progress=progress
        )
        self.image = build.reference
        self.summary["image_built"] = build.built

    async def _pull(self) -> None:
        import aiodocker

        async def pull(node: Any) -> None:
            start = time.monotonic()
            async with aiodocker.Docker(url=f"http://{node.addr}:2375") as docker:
                await asyncio.wait_for(docker.images.pull(self.image), 180)
            self.say(f"    {node.name}: pulled in {time.monotonic() - start:.1f} s")

        await asyncio.gather(*[pull(node) for node in self.bed.nodes])

    async def _tron(self) -> None:
        import yaml

        from fliswarm_testbed.tron import TronClient, free_port

        actor_port, tron_port = free_port(), free_port()
        config = self.bed.fliswarm_config(self.image, port=actor_port)
        config["actor"].update(
            tron_host="127.0.0.1", tron_port=tron_port, log_dir=str(self.paths.root / "actor")
        )
        config["timeouts"] = {"docker_connect": 1.0, "docker_request": 10, "talk": 10}
        self.paths.root.mkdir(parents=True, exist_ok=True)
        self.paths.config.write_text(yaml.safe_dump(config, sort_keys=False))
        pid = await asyncio.to_thread(start_tron, self.paths, actor_port, tron_port)
        while True:  # the step's timeout bounds this
            if not alive(pid, str(self.paths.root)):
                log = (self.paths.tron_dir / "keeper.log").read_text(errors="replace")
                raise DemoError(f"the tron keeper exited:\n{log[-2000:]}")
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                client = await TronClient.connect("127.0.0.1", tron_port, 2, program="demo")
                with contextlib.suppress(Exception):
                    if (await client.send("version", actor="hub", timeout=2)).ok:
                        self.client = client
                        break
                await client.close()
            await asyncio.sleep(0.2)
        self.summary.update(tron_port=tron_port, actor_port=actor_port, tron_keeper_pid=pid)
        self.say(f"    tron commander port 127.0.0.1:{tron_port} (keeper pid {pid})")

    async def _daemon(self) -> None:
        from fliswarm.daemon import read_pid

        done = await asyncio.to_thread(
            fliswarm_cli, self.paths, "start", "--log", str(self.paths.log_file), timeout=80
        )
        for line in (done.stdout + done.stderr).strip().splitlines():
            self.say(f"    {line}")
        if done.returncode != 0:
            raise DemoError(f"fliswarm start exited with {done.returncode}; see the log above.")
        self.summary["daemon_pid"] = read_pid(self.paths.pid_file)

    async def _registered(self) -> None:
        for _attempt in range(1000):  # the step's timeout bounds this
            if (await self.client.send("ping", timeout=5)).ok:
                break
            await asyncio.sleep(0.3)  # tron answers NoTarget until fliswarm has registered
        self.say("    fliswarm ping through tron: ok")

    async def _send(self, command: str, timeout: float, show: Callable[[Any], bool]) -> Any:
        reply = await self.client.send(command, timeout=timeout)
        for line in reply.lines:
            if show(line) or line.finishes:
                self.show(line)
        if not reply.ok:
            raise DemoError(f"'{command}' failed:\n{reply}")
        return reply

    async def _reconnect(self) -> None:
        await self._send("reconnect", 200, lambda line: "text" in line.keywords)

    async def _status(self) -> None:
        wanted = {"enabledNodes", "nodeState", "node", "container", "volume", "device"}
        reply = await self._send("status", 50, lambda line: bool(wanted & set(line.keywords)))
        containers = [
            line.keywords["container"] for line in reply.lines if "container" in line.keywords
        ]
        self.summary["containers"] = containers

    async def _expose(self) -> None:
        reply = await self._send("talk expose 0.1", 80, lambda line: True)
        paths = reply.values("filename_bundle")
        if len(paths) != len(self.bed.nodes):
            raise DemoError(f"{len(paths)} FITS files for {len(self.bed.nodes)} cameras.")
        self.say(f"    FITS files on the data volume ({self.bed.data_dir} on the manager):")
        for path in paths:
            if not await asyncio.to_thread(os.path.isfile, path):
                raise DemoError(f"{path} does not exist on the data volume.")
            size = await asyncio.to_thread(os.path.getsize, path)
            self.say(f"      {path} ({size / 1024:.0f} KiB)")
        self.summary["fits"] = paths

    async def _heal(self) -> None:
        import aiodocker

        node = self.bed.nodes[0]
        name = f"{self.bed.fliswarm_config(self.image, port=1)['container_name']}-{node.name}"
        queue = self.client.watch()
        try:
            start = time.monotonic()
            async with aiodocker.Docker(url=f"http://{node.addr}:2375") as docker:
                container = await asyncio.wait_for(docker.containers.get(name), 10)
                await asyncio.wait_for(container.kill(), 10)
            self.say(f"    killed {name} on {node.name} (SIGKILL)")

            died = False

            def about_node(line: Any) -> bool:  # online again after the container died
                nonlocal died
                for key in ("nodeState", "containerEvent"):
                    values = line.keywords.get(key)
                    if isinstance(values, list) and values[0] == node.name:
                        self.show(line)
                        died = died or (key == "containerEvent" and values[1] == "die")
                        return died and key == "nodeState" and values[1] == "online"
                return False

            await self.client.wait_line(about_node, 80, queue)
        finally:
            self.client.unwatch(queue)
        reply = await self._send(f"talk -n {node.name} status", 20, lambda line: False)
        took = time.monotonic() - start
        if reply.values("status")[:1] != [node.name]:
            raise DemoError(f"{node.name} answers no status after the heal:\n{reply}")
        self.say(f"    {node.name}: killed -> healed and answering in {took:.1f} s")
        self.summary["heal_seconds"] = round(took, 2)


def _epilogue(demo: Demo, say: Callable[[str], None]) -> None:
    paths, port = demo.paths, demo.summary["tron_port"]
    flag = f" --instance {demo.instance}" if demo.instance else ""
    say("")
    say(f"fliswarm demo is up ({demo.summary['seconds']:.0f} s). Talk to it through tron:")
    say(f"  tron commander port: 127.0.0.1:{port} (lines: <program>.<user> <id> <actor> <cmd>)")
    say(f"  fliswarm send --tron 127.0.0.1:{port} status")
    say(f"  fliswarm send --tron 127.0.0.1:{port} talk -c gfa expose 1")
    say(f"  fliswarm -c {paths.config} send     # a prompt, to the actor directly")
    say(f"  fliswarm --pid-file {paths.pid_file} status      # is the daemon running?")
    say(f"  fliswarm log: {paths.log_file}")
    say(f"  configuration: {paths.config}; tron output: {paths.tron_dir}/tron.out")
    say(f"Stop everything (fliswarm daemon, tron, test bed): fliswarm demo{flag} down")


def run_demo(instance: int, n_nodes: int, keep: bool, say: Callable[[str], None]) -> int:
    """Runs the demo; returns the exit status (0 when every step passed)."""

    if os.geteuid() != 0:
        say("ERROR: the demo needs root (network namespaces, dockerd).")
        return 1
    demo = Demo(instance, n_nodes, say)
    failed = False
    try:
        asyncio.run(demo.run())
    except DemoError as err:
        failed = True
        say(f"ERROR: {err}")
        say(f"Logs: {demo.paths.root} (fliswarm.log, tron/).")
    except KeyboardInterrupt:
        failed = True
        say("Interrupted.")
    if keep and not failed:
        _epilogue(demo, say)
    elif keep:
        say(
            f"Left running for inspection; clean up with: fliswarm demo --instance {instance} down"
        )
    else:
        stop_demo(instance, say)
    return 1 if failed else 0


def _instance(ctx: click.Context, _param: click.Parameter, value: int | None) -> None:
    if value is not None:
        ctx.ensure_object(dict)["demo_instance"] = value


_instance_option = click.option(
    "--instance", type=int, default=None, hidden=True, expose_value=False, callback=_instance
)


@click.group(invoke_without_command=True)
@click.option("--nodes", "n_nodes", type=click.IntRange(1, 20), default=3, show_default=True)
@click.option("--keep/--down", default=True, help="Leave the site running (default) or clean up.")
@_instance_option
@click.pass_context
def demo(ctx: click.Context, n_nodes: int, keep: bool) -> None:
    """A simulated site on this machine, driven through tron (needs root).

    Test bed nodes and registry, the flicamera simulation image, a tron hub on loopback and
    fliswarm as a daemon; then reconnect, status, an exposure on every camera and a killed
    container healed by the supervisor. ``fliswarm demo down`` removes everything.
    """

    if ctx.invoked_subcommand is None:
        instance = ctx.ensure_object(dict).get("demo_instance") or 0
        ctx.exit(run_demo(instance, n_nodes, keep, click.echo))


@demo.command()
@_instance_option
@click.pass_context
def down(ctx: click.Context) -> None:
    """Stops the demo's fliswarm daemon and tron hub and tears its test bed down."""

    if os.geteuid() != 0:
        raise click.ClickException("the demo needs root.")
    stop_demo(ctx.ensure_object(dict).get("demo_instance") or 0, click.echo)


if __name__ == "__main__" and sys.argv[1:2] == ["_tron"]:
    asyncio.run(keep_tron(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))
