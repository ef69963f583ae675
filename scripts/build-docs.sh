#!/usr/bin/env bash
# Builds the HTML documentation with warnings as errors. Extra arguments go to sphinx-build.
# Output: docs/_build/html (or the directory given with OUT=...).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-docs/_build/html}"
exec python3 -m sphinx -W --keep-going -b html docs "$OUT" "$@"
