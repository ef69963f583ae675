"""The side-by-side benchmark suite in smoke mode: one repetition, 3 nodes, the real test bed."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest


ROOT = pathlib.Path(__file__).resolve().parent.parent
RUN = ROOT / "benchmarks" / "run.py"

ROWS = [
    "status, all nodes up",
    "status, 1 node off",
    "status, 3 nodes off",
    "reconnect --force, cached: all talking",
    "reconnect --force, cold pulls: all talking",
    "talk -n gfa1 status",
    "talk status (all)",
    "talk -c gfa expose 0.1",
    "relay: added to a talk round trip",
    "relay: actor CPU per relayed line",
    "container killed -> talk works",
    "idle CPU (% of a core)",
    "status, 6 nodes",
]


@pytest.mark.root
@pytest.mark.timeout(240)
def test_benchmarks_smoke(tmp_path: pathlib.Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("NOT ROOT: the benchmarks need the Docker test bed.")
    output = tmp_path / "performance.md"
    # A bed of its own: the harness changes its engines (a /dev/bus/usb for the original).
    suite_bed = int(os.environ.get("FLISWARM_TESTBED_ID", "0") or 0)
    instance = "13" if suite_bed == 12 else "12"
    proc = subprocess.run(
        [sys.executable, str(RUN), "--smoke", "--instance", instance, "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=180,  # The CI bound of the smoke run.
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    page = output.read_text()
    for row in ROWS:
        line = next((line for line in proc.stdout.splitlines() if line.startswith(row)), None)
        assert line is not None, f"{row!r} missing from the table:\n{proc.stdout[-3000:]}"
        assert " - " not in f" {line} ".split(row, 1)[1][:60], f"no figures: {line}"
        assert f"| {row} |" in page
    for key in ("nproc", "kernel", "dockerd", "aiodocker", "original"):
        assert f"| {key} |" in page
    floor_note = r"note: (Floor under `reconnect --force`.*listen after [0-9.]+ s.*)"
    floor = re.search(floor_note, proc.stdout)
    assert floor is not None, proc.stdout[-3000:]
    assert floor.group(1) in page
