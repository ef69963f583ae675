#!/usr/bin/env bash
# Installs the Debian and Python packages fliswarm, its test bed and its test suite need.
# Safe to run again: it only installs what is missing. Needs root for apt.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBS="docker.io docker-registry busybox-static iputils-ping iproute2 util-linux curl openssh-client"
missing=""
for pkg in $DEBS; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    echo "== apt-get install$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends $missing
fi

# pip >= 24: older ones cannot resolve the test bed's requirement on sdss-fliswarm against this
# tree's editable install with extras.
python3 -m pip install -q 'pip>=24'
# Before 1.0.0 this project's distribution was called fliswarm; it is sdss-fliswarm now (the
# name of 0.7). An install under the old name would own the fliswarm package beside the new one:
# remove it. (From /: run in this tree, pip would also see the tree's own egg-info.)
if (cd / && python3 -m pip show fliswarm >/dev/null 2>&1); then
    echo "== pip uninstall fliswarm (the name of sdss-fliswarm before 1.0.0)"
    (cd / && python3 -m pip uninstall -q -y fliswarm)
fi
if grep -qx "Name: fliswarm" fliswarm.egg-info/PKG-INFO 2>/dev/null; then
    rm -rf fliswarm.egg-info  # The old name's build metadata, left in the tree by -e.
fi
echo "== pip install -e ./testbed -e .[dev,docs]"
# The test bed (testbed/, package fliswarm_testbed) is its own distribution, which the dev
# extra asks for: both (fliswarm-testbed and sdss-fliswarm) are installed from this tree in one
# resolution; an sdss-fliswarm 0.7 already installed is replaced.
python3 -m pip install -q -e ./testbed -e '.[dev,docs]'
# With pyenv, make the new console scripts (fliswarm) visible on PATH.
if command -v pyenv >/dev/null 2>&1; then pyenv rehash || true; fi
