#!/usr/bin/env bash
# Runs the whole test suite on a Debian machine as root: installs what is missing
# (Debian and Python packages), then runs pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
exec python3 -m pytest -ra --durations=15 "$@"
