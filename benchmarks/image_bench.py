"""Times the offline flicamera image build: cold, then cached (target: cached < 2 s).

Run: ``python3 benchmarks/image_bench.py``. It starts a ``docker-registry`` on a free loopback
port and builds into a temporary cache directory (the shared cache is left alone unless
``--cache-dir`` points at it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from fliswarm_testbed.image import build_flicamera_image


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_registry(addr: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://{addr}/v2/", timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--cached-runs", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="image-bench-") as tmp:
        root = Path(tmp)
        cache_dir = args.cache_dir or root / "cache"
        addr = f"127.0.0.1:{free_port()}"
        config = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(root / "registry")}},
            "http": {"addr": addr},
        }
        (root / "registry.yml").write_text(json.dumps(config))
        binary = shutil.which("docker-registry") or "/usr/bin/docker-registry"
        with open(root / "registry.log", "wb") as log:
            registry = subprocess.Popen(
                [binary, "serve", str(root / "registry.yml")], stdout=log, stderr=log
            )
        try:
            wait_registry(addr)
            cold = build_flicamera_image(addr, cache_dir=cache_dir, rebuild=True)
            steps = json.loads((cache_dir / cold.inputs_hash / "build.json").read_text())
            print(f"cold build + push: {cold.seconds:.2f} s")
            for step, seconds in steps["step_seconds"].items():
                print(f"  {step:<26} {seconds:6.2f} s")
            mib = 1024 * 1024
            rootfs, layer = cold.rootfs_size / mib, cold.layer_size / mib
            print(f"  rootfs {rootfs:.0f} MiB, layer {layer:.0f} MiB (gzip)")
            cached = [
                build_flicamera_image(addr, cache_dir=cache_dir).seconds
                for _ in range(args.cached_runs)
            ]
            print(f"cached (same registry): max {max(cached):.3f} s over {len(cached)} runs")
            other = build_flicamera_image(addr, "bench/other", cache_dir=cache_dir)
            print(f"cached build, push to a new repository: {other.seconds:.2f} s")
            verdict = "OK" if max(cached) < 2.0 else "TOO SLOW"
            print(f"target cached < 2 s: {verdict}")
        finally:
            registry.terminate()
            registry.wait(10)


if __name__ == "__main__":
    main()
