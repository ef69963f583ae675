"""Shared pytest configuration for the fliswarm test suite."""

from __future__ import annotations

import os

import pytest


IS_ROOT = os.geteuid() == 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skips root-only tests loudly when not root; in CI they must run."""

    if IS_ROOT:
        return
    if os.environ.get("FLISWARM_REQUIRE_ROOT_TESTS"):
        raise pytest.UsageError("root-only tests are required here but we are not root.")
    skip = pytest.mark.skip(reason="NOT ROOT: this test needs root (netns, dockerd); run as root")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)
