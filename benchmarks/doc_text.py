"""The text of ``docs/performance.md`` around the table that `run.py` prints."""

from __future__ import annotations

import argparse


__all__ = ["render"]


METHOD = """\
## How it is measured

`python3 benchmarks/run.py` (root) does everything and writes this page; options:
`[--nodes 7] [--repeat 5] [--idle 60] [--smoke] [--only a,b,floor,idle,scale] [--output PAGE]
[--instance N]`. Without `--output`, a full run writes `docs/performance.md` and a `--smoke` or
`--only` run writes no page; `--prepare` only does the slow first-time set-up (the original's
virtual environment, the image built and pushed). The page records the commit it measured
(`git rev-parse --short HEAD`, with "+ uncommitted changes" when the tree differed from it).
The run brings up the [test bed](nodes.md) (one `dockerd` per node in its own network
namespace, a registry on the manager), builds the simulated flicamera image (the real
flicamera 0.7.2 actor with a simulated camera), installs the original `sdss-fliswarm==0.7.0`
with `python3 -m venv` + `pip` into a cached virtual environment
(`/var/cache/fliswarm-bench/venv-orig`), and runs each scenario against both actors. Both
actors run as separate processes on 127.0.0.1, with the same nodes, image, registry and
volume; only loopback and the bed's node addresses are contacted. SIGTERM stops a run
cleanly (actors and flicamera processes stopped, bed down).

- **Alternating sessions.** A session starts one actor, runs scenarios and stops it. At every
  repetition both actors get the same sessions; the order flips between repetitions, so that a
  slow phase of the machine does not land on one side only. Each cell of the table gives the
  median, the minimum and maximum and the number of samples `n`; the ratio is
  `median(original) / median(fliswarm)` (above 1: fliswarm is faster or lighter; for lines/s,
  below 1).
- **Measurement floors.** Idle CPU time is counted in clock ticks (10 ms) and RSS in pages
  (4 KiB): a median at or below one tick over its window, or one page of growth, is the
  resolution of the measurement, not a figure to divide by. Such a row has no ratio: the
  ratio column says which side is at the floor and what the floor is (e.g. "n/a: both at
  floor (1 clock tick = 0.083 %)"), next to the two medians.
- **Session A** (from nodes without containers, volume or image): `reconnect --force` with cold
  pulls, then again with the image cached. "command" is the time until the command finished,
  "all talking" the time from sending it until `talk status` is answered by every camera.
  Then `talk`, `status` with every node up, and the relay: `talk -n <node> status`
  round trips interleaved with the same `status` sent straight to that flicamera (the
  difference of the medians is what the actor adds) and through the least relay there is
  (`benchmarks/relay_floor.py`, its own process: the line in, JSON to flicamera, each reply
  line out, no parser, log or framework; the note "Floor under a `talk` round trip"), then
  20 concurrent `talk status` loops
  (700 commands to every node; 60 in smoke mode) for the relayed lines per second and the
  actor's CPU time per relayed line, then 5,000 `talk -n <node> status` (300 in smoke mode)
  for the actor's RSS growth.
  fliswarm runs with `self_healing: false` in this session, otherwise its supervisor would
  pull and start the containers by itself before the operator's `reconnect` (the original
  has no supervisor).
- **Session B** (default configuration, the containers of session A running): a flicamera
  container is killed and `talk -n <node> status` is retried until it works. fliswarm recovers
  by itself; **the original needs an operator `reconnect -n <node>`, which the harness sends
  0.2 s after the kill**: its figure includes that command. Then nodes are powered off (their
  processes killed, their network gone: a Docker call hangs like on a dead machine): first
  one, then, once it is powered on again and every camera answers, three at once.
  - "from the power-off" is what an operator sees, measured the same way for both actors:
    `status` is sent as soon as the nodes are off and timed from that moment to its last
    line. One sample per session, so `n` is the number of repetitions.
  - "once fliswarm has marked it offline": `status` again (5 times; 3 in smoke mode), for
    fliswarm after its supervisor reports the nodes offline (waited for on its `nodeState`
    keyword), when it answers for them from its supervision state. The original has no such
    state and probes every node at every `status`; its samples in these rows are taken right
    after its first `status`.
  - "network cut": the cable of one node is pulled (its engine keeps running; packets to
    it are dropped, never refused) and `status` is sent 6 s later (what an operator sees
    some seconds after such a cut; 5 samples, 2 in smoke mode), for both actors.
- **Start** (nodes with the image but no container, default configuration): the actor is
  started and `reconnect --force` sent as soon as its port answers, while fliswarm's
  supervisor is already creating the containers; "all talking" is from sending the command
  until `talk status` is answered by every camera. The original has no supervisor: its
  `reconnect --force` starts from empty nodes. Compare with the floor note below.
- **Idle**: with every camera connected, the actor's CPU time (its process and its waited-for
  children: the original runs `ping` through a shell) over five windows of `--idle` / 5 (12 s
  in the full run, 1 s in smoke mode), and its RSS at the end of each session. The windows are
  spread over the repetitions (one per repetition in the full run) and each repetition runs
  them in its own order, like the other sessions.
- **Scale**: logical nodes `sNN`, each a flicamera container with its own port
  (`FLICAMERA_PORT` through fliswarm's per-node `environment`), spread over the bed's engines;
  `status` and `talk status` with the first N nodes enabled, 15 times each per session. The
  original is configured with the same hosts and ports and talks to the containers fliswarm
  started.

### /dev/bus/usb on the test bed

The original always bind-mounts `/dev/bus/usb` into the flicamera container, and the Docker
engine refuses a bind mount whose source does not exist; the bed's machines have no USB bus.
The harness (`benchmarks/harness.py`, `provide_usb_bus`) therefore gives each node's `dockerd`
a private `/dev` inside the node's own mount namespace (the bed starts every engine with
`unshare --mount --propagation slave`): a tmpfs copy of the host's device nodes with `pts`,
`shm`, `mqueue` bound back and an empty `bus/usb`, moved over `/dev` with `nsenter` into the
engine's mount namespace. The host's `/dev` never changes and the copy disappears with the
node's engine; it is set up again after a node is powered on. fliswarm passes the bus through
only where it exists, so both actors get the same mounts on the bed.
"""

CAVEATS = """\
## Reading the figures

- The machine has few cores, and the bed's seven `dockerd`s, the registry, up to 50 flicamera
  processes and both actors share them (and other jobs may run at the same time): absolute
  figures are those of a small, busy machine; the ratios within one run are the comparison.
- `reconnect --force` is bounded below by the flicamera containers themselves: each flicamera
  imports astropy, photutils and CLU before it listens (about 1 s of CPU), and on this machine
  all of them start at once on two cores; the note "Floor under `reconnect --force`" above
  gives, from this run, the time the same flicamera processes take to listen when started
  directly on the host with no Docker and no actor at all. No manager can go below it here (on
  the real site each node has its own CPU). With cold pulls every node also pulls and unpacks
  the 111 MiB image at once: the engines spend about 5 s of CPU per node unpacking and
  checksumming, on the same two cores. The original waits a fixed 5 s after starting the
  containers; fliswarm probes each flicamera's port every 40 ms and connects at once.
- CPU per relayed line: both actors parse each command with click and write each reply line
  through CLU; fliswarm relays flicamera's keywords without CLU's per-line schema validation
  (they are flicamera's, not fliswarm's) and decodes each JSON reply line once. The memory
  figure of the original grows because CLU 2.6 keeps every command's click context (and so
  the command and its replies) on click's global context stack; fliswarm pops it
  (`fliswarm.compat`, see {doc}`upstream-clu`).
- `status` with nodes off: right after a power-off neither actor knows that the nodes are
  dead. The original pings the nodes one after the other and each dead node costs it its
  `ping_timeout` (0.6 s here); fliswarm asks every engine at once and pings a node whose
  engine has not answered within 0.1 s, so a dead node costs it about 0.1 s plus the same
  `ping_timeout`, whatever the number of dead nodes. A factor of 10 from the very moment of
  the power-off is out of reach for any actor that honours `ping_timeout` ("how long to wait
  for a node to answer ping before it is reported down"): one dead node costs any such actor
  at least 0.6 s, about the original's whole time for it. The rows "once
  fliswarm has marked ..." are the same command a few seconds later (the run prints when the
  supervisor reported the nodes offline), when fliswarm answers from its supervision state;
  likewise the "network cut" row, 6 s after the cut.
- The original's `status` lists containers by "ancestor" image without the tag and so reports
  no container for the `:sim` image of the bed; it does the same Docker calls either way.
"""


def render(
    info: dict[str, str],
    table: str,
    args: argparse.Namespace,
    notes: list[str],
    failed: list[str],
) -> str:
    """The whole page."""

    mode = "smoke run" if args.smoke else "full run"
    lines = [
        "# Performance",
        "",
        "fliswarm against the original `sdss-fliswarm` 0.7.0, side by side on the same real "
        "test bed. This page is written by `benchmarks/run.py`; the figures below are the ones "
        f"it printed, measured on commit {info.get('commit', '?')}.",
        "",
        f"## Results ({mode}: {args.nodes} nodes, {args.repeat} repetition(s), "
        f"idle {args.idle:g} s per actor in {args.idle_windows} windows)",
        "",
        "| | |",
        "|---|---|",
    ]
    lines += [f"| {key} | {value} |" for key, value in info.items()]
    lines += ["", table, ""]
    if failed:
        lines += ["Targets not met in this run:", ""]
        lines += [f"- {line}" for line in failed]
        lines.append("")
    if notes:
        lines += ["Notes from the run:", ""]
        lines += [f"- {note}" for note in notes]
        lines.append("")
    lines += [METHOD, CAVEATS]
    return "\n".join(lines)
