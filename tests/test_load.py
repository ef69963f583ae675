"""Bounded load on the real actor (``benchmarks/load_bench.py`` runs the full 20 x 200).

10 clients at once, 40 commands each (``status``, ``talk status``, ``ping``, ``talk -n gfaN
status``) through the real actor with real flicamera actors on the host, three rounds: every
command ends, every reply reaches the client that sent the command, and the actor's
bookkeeping (device command ids, pending sub-commands, users, transports, CLU command
objects, tasks) and memory stay flat from one round to the next.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parent.parent


def _load_bench():
    spec = importlib.util.spec_from_file_location(
        "load_bench", ROOT / "benchmarks" / "load_bench.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["load_bench"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(120)
async def test_concurrent_clients_bounded(tmp_path: Path):
    bench = _load_bench()
    lines: list[str] = []
    result = await bench.run_load(
        n_clients=10,
        n_commands=40,
        n_cameras=2,
        rounds=3,
        work_dir=tmp_path,
        report=lines.append,
        propagate_logs=False,  # pytest's log capture would keep every record in memory.
    )
    print("\n".join(lines))
    base = result.baseline
    for index, round_ in enumerate(result.rounds, start=1):
        assert round_.commands == 400, lines[index]
        assert round_.unfinished == 0 and round_.misrouted == 0, lines[index]
        assert round_.ok == round_.commands, lines[index]
        counts = round_.counts
        assert counts["ids_in_use"] == 0 and counts["running"] == 0, lines[index]
        assert counts["users"] == 0 and counts["server_transports"] == 0, lines[index]
        assert counts["commands_alive"] <= base["commands_alive"] + 5, lines[index]
        assert counts["tasks"] <= base["tasks"] + 2, lines[index]
    # Memory: flat between the last rounds (allocator noise aside).
    growth = result.rounds[-1].counts["rss_mib"] - result.rounds[1].counts["rss_mib"]
    assert growth < 5, f"RSS grew by {growth:.1f} MiB: " + "\n".join(lines)
