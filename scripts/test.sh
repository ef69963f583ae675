#!/usr/bin/env bash
# Runs the whole test suite (needs root for the test bed tests).
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 -m pytest -ra "$@"
