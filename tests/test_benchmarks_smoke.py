"""The side-by-side benchmark suite in smoke mode: one repetition, 3 nodes, the real test bed.

``benchmarks/run.py`` runs in a child process of its own process group, on a test-bed
instance of its own: ``$FLISWARM_BENCH_TEST_INSTANCE`` if set, else the suite's instance
(``$FLISWARM_TESTBED_ID``, default 0) when that bed is not up, else 12 (13 if the suite's is
12). The harness changes the engines of its bed (a ``/dev/bus/usb`` for the original), so it
never shares a bed that is up; a bed already up on that instance fails the test at once.

- The slow first-time set-up (the original's virtual environment, the flicamera image built
  and pushed) is the session fixture ``bench_prepared`` (``run.py --prepare``), bounded by its
  own `PREPARE_TIMEOUT`; the test's time-out covers only the test function.
- The smoke run is bounded by `SMOKE_TIMEOUT`, a "does not hang" bound, not a speed claim
  (warm, the run took 179 to 265 s on the shared 2-core machine). On time-out the test sends
  SIGTERM to the child's process group (run.py then stops its actors and flicamera processes
  and brings its bed down), waits `GRACE`, then SIGKILLs the group.
- Whatever happened, the test then brings the bed down if it is still up and kills every
  process the child started (they carry ``FLISWARM_BENCH_RUN=<token>`` in their environment).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from fliswarm_testbed.bed import Testbed


ROOT = pathlib.Path(__file__).resolve().parent.parent
RUN = ROOT / "benchmarks" / "run.py"

#: Bound of the first-time set-up (cold, pip installs the original with its dependencies and
#: flicamera for the image: 132 s with empty caches on the shared 2-core machine).
PREPARE_TIMEOUT = 600.0
#: "Does not hang" bound of the warm smoke run: about 3x its usual time (179 to 265 s warm on
#: the shared 2-core machine).
SMOKE_TIMEOUT = 600.0
#: After SIGTERM, how long run.py gets to clean up before SIGKILL.
GRACE = 60.0
#: Marker in the environment of every process the child starts.
MARKER = "FLISWARM_BENCH_RUN"

ROWS = [
    "status, all nodes up",
    "status, 1 node off: from the power-off",
    "status, 3 nodes off: from the power-off",
    "status, 1 node off: once fliswarm has marked it offline",
    "status, 3 nodes off: once fliswarm has marked them offline",
    "status, 1 node's network cut (6 s after)",
    "reconnect --force right after start (supervisor at work): all talking",
    "reconnect --force, cached: all talking",
    "reconnect --force, cold pulls: all talking",
    "talk -n gfa1 status",
    "talk status (all)",
    "talk -c gfa expose 0.1",
    "relay: added to a talk round trip",
    "relay: actor CPU per relayed line",
    "RSS growth after 5000 talk (smoke 300)",
    "container killed -> talk works",
    "idle CPU (% of a core)",
    "status, 6 nodes",
]


@dataclass
class Outcome:
    returncode: int | None  # None: it did not end within the time-out
    stdout: str
    stderr: str
    seconds: float

    def tail(self) -> str:
        return f"--- stdout\n{self.stdout[-3000:]}\n--- stderr\n{self.stderr[-3000:]}"


def _marked(token: str) -> list[int]:
    """PIDs of the live processes with ``MARKER=token`` in their environment."""

    needle = f"{MARKER}={token}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _of_bed(pid: int, bed: Testbed) -> bool:
    """Whether the process is one of the bed's daemons (its cgroups or its run directory)."""

    try:
        with open(f"/proc/{pid}/cgroup") as f:
            if f"/{bed.plan.prefix}-" in f.read():
                return True
    except OSError:
        return False
    return bed.run_dir + "/" in _cmdline(pid)


def _kill_marked(token: str, spare: Testbed | None = None, grace: float = 10.0) -> list[str]:
    """SIGTERMs, then after ``grace`` s SIGKILLs, the processes of ``token`` (but not the
    daemons of the bed ``spare``); returns what it found."""

    found = {pid: _cmdline(pid) for pid in _marked(token)}
    if spare is not None:
        found = {pid: cmd for pid, cmd in found.items() if not _of_bed(pid, spare)}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and set(found) & set(_marked(token)):
            time.sleep(0.1)
    return [f"{pid}: {cmd[:200]}" for pid, cmd in found.items()]


def _stop_group(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """SIGTERM to the child's process group, `GRACE` s to end, then SIGKILL."""

    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        return proc.communicate(timeout=GRACE)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.communicate()


@contextlib.contextmanager
def _bounded_run(args: list[str], instance: int, timeout: float) -> Iterator[Outcome]:
    """Runs ``run.py <args> --instance <instance>`` in its own process group within
    ``timeout`` seconds; afterwards (whatever happened, time-outs and test failures
    included) brings the bed down if it is still up and kills what the child left."""

    bed = Testbed(instance)
    if bed.is_up():
        pytest.fail(
            f"test bed {instance} is already up (left over, or someone else's?): bring it "
            f"down with `fliswarm testbed -i {instance} down` or set "
            "FLISWARM_BENCH_TEST_INSTANCE."
        )
    token = f"{instance}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, PYTHONUNBUFFERED="1", FLISWARM_TESTBED_ID=str(instance))
    env[MARKER] = token
    argv = [sys.executable, str(RUN), *args, "--instance", str(instance)]
    start = time.monotonic()
    proc = subprocess.Popen(
        argv,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group
    )
    try:
        try:
            out, err = proc.communicate(timeout=timeout)
            outcome = Outcome(proc.returncode, out, err, time.monotonic() - start)
        except subprocess.TimeoutExpired:
            out, err = _stop_group(proc)
            outcome = Outcome(None, out, err, time.monotonic() - start)
        yield outcome
    finally:
        if proc.poll() is None:  # An exception (pytest's own time-out) interrupted us.
            _stop_group(proc)
        # Actors and flicamera processes first (nothing talks to the bed while it goes),
        # then the bed, then anything else of the child's (the bed's own daemons included).
        left = _kill_marked(token, spare=bed)
        if bed.is_up():
            left.append(f"test bed {instance}")
            bed.down()
        left += _kill_marked(token)
        if left:
            print(f"cleaned up after run.py {' '.join(args)}:", *left, sep="\n  ")


@pytest.fixture(scope="session")
def bench_instance() -> int:
    explicit = os.environ.get("FLISWARM_BENCH_TEST_INSTANCE")
    if explicit:
        return int(explicit)
    suite = int(os.environ.get("FLISWARM_TESTBED_ID", "0") or 0)
    if os.geteuid() == 0 and not Testbed(suite).is_up():
        return suite
    return 13 if suite == 12 else 12


@pytest.fixture(scope="session")
def bench_prepared(bench_instance: int) -> int:
    """The slow first-time set-up, bounded on its own (``run.py --prepare``)."""

    if os.geteuid() != 0:
        pytest.skip("NOT ROOT: the benchmarks need the Docker test bed.")
    with _bounded_run(["--prepare"], bench_instance, PREPARE_TIMEOUT) as outcome:
        assert outcome.returncode is not None, (
            f"the first-time set-up did not end within {PREPARE_TIMEOUT:.0f} s\n{outcome.tail()}"
        )
        assert outcome.returncode == 0, outcome.tail()
    return bench_instance


@pytest.mark.root
@pytest.mark.timeout(SMOKE_TIMEOUT + 2 * GRACE + 120, func_only=True)
def test_benchmarks_smoke(bench_prepared: int, tmp_path: pathlib.Path) -> None:
    output = tmp_path / "performance.md"
    with _bounded_run(
        ["--smoke", "--output", str(output)], bench_prepared, SMOKE_TIMEOUT
    ) as outcome:
        print(f"smoke run: {outcome.seconds:.0f} s (exit {outcome.returncode})")
        assert outcome.returncode is not None, (
            f"the smoke run did not end within {SMOKE_TIMEOUT:.0f} s (hung?)\n{outcome.tail()}"
        )
        assert outcome.returncode == 0, outcome.tail()
    stdout = outcome.stdout
    page = output.read_text()
    for row in ROWS:
        line = next((line for line in stdout.splitlines() if line.startswith(row)), None)
        assert line is not None, f"{row!r} missing from the table:\n{stdout[-3000:]}"
        assert " - " not in f" {line} ".split(row, 1)[1][:60], f"no figures: {line}"
        assert f"| {row} |" in page
    for key in ("commit", "nproc", "kernel", "dockerd", "aiodocker", "original"):
        assert f"| {key} |" in page
    commit = re.search(r"^commit: ([0-9a-f]{7,}( \+ uncommitted changes)?)$", stdout, re.M)
    assert commit is not None, stdout[-3000:]
    assert f"measured on commit {commit.group(1)}." in page
    floor_note = r"note: (Floor under `reconnect --force`.*listen after [0-9.]+ s.*)"
    floor = re.search(floor_note, stdout)
    assert floor is not None, stdout[-3000:]
    assert floor.group(1) in page
