"""Bounded load on the real actor (``benchmarks/load_bench.py`` runs the full 20 x 200).

10 clients at once, 40 commands each (``status``, ``talk status``, ``ping``, ``talk -n gfaN
status``) through the real actor with real flicamera actors on the host, three rounds. The
claims are those of the full benchmark and of ``docs/reliability.md``, checked by the same
function (``load_bench.check_claims``): every command ends, every reply reaches the client
that sent the command, the actor's bookkeeping (device command ids, pending sub-commands,
users, transports, CLU command objects, tasks) is back where it was after every round, and
memory stays flat from one round to the next.
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


@pytest.mark.timeout(120)  # "does not hang": 7 to 19 s on the shared 2-core machine
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
    assert [r.commands for r in result.rounds] == [400, 400, 400], lines
    failures = bench.check_claims(result)
    assert not failures, "\n".join(failures + lines)
