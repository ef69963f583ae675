"""Shared pytest configuration for the fliswarm test suite."""

from __future__ import annotations

import os

import pytest


# Fixtures of the real test bed (Docker nodes, registry, images) and of the tron hub.
pytest_plugins = ["fliswarm_testbed.fixtures", "fliswarm_testbed.tron_fixtures"]

IS_ROOT = os.geteuid() == 0
# Set by .ci/run: tests that need root must run there, never skip.
REQUIRE_ROOT_TESTS = bool(os.environ.get("FLISWARM_REQUIRE_ROOT_TESTS"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skips root-only tests loudly when not root; where they are required, fails instead."""

    if IS_ROOT:
        return
    if REQUIRE_ROOT_TESTS:
        raise pytest.UsageError("root-only tests are required here but we are not root.")
    skip = pytest.mark.skip(reason="NOT ROOT: this test needs root (netns, dockerd); run as root")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Where root tests are required (CI), a skipped root test is a failure."""

    report = yield
    if REQUIRE_ROOT_TESTS and report.skipped and "root" in item.keywords:
        report.outcome = "failed"
        report.longrepr = f"root test {item.nodeid} was skipped, but CI must run it"
    return report
