"""Tests of the small public helpers in fliswarm.tools (pure logic)."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fliswarm.tools import FakeCommand, IDPool, select_nodes, split_names, subprocess_run_async


@dataclass(frozen=True)
class FakeNode:
    name: str
    category: str | None
    enabled: bool = True


NAMES = st.sampled_from(["gfa1", "gfa2", "gfa3", "fvc", "spare", "x-1"])
CATEGORIES = st.sampled_from(["gfa", "fvc", None])


@st.composite
def node_sets(draw):
    names = draw(st.lists(NAMES, unique=True, max_size=6))
    return {name: FakeNode(name, draw(CATEGORIES), draw(st.booleans())) for name in names}


@given(
    nodes=node_sets(),
    names=st.none() | st.lists(NAMES, max_size=4),
    category=st.none() | CATEGORIES,
    as_string=st.booleans(),
)
def test_select_nodes_properties(nodes, names, category, as_string):
    query_names = ", ".join(names) if (as_string and names is not None) else names
    selected = select_nodes(nodes, category=category, names=query_names)

    enabled = {node for node in nodes.values() if node.enabled}
    assert selected <= enabled  # disabled nodes never returned

    if not names and not category:
        assert selected == enabled
    else:
        expected = {
            node
            for node in enabled
            if node.name in (names or []) or (category and node.category == category)
        }
        assert selected == expected


def test_select_nodes_examples():
    nodes = {
        "gfa1": FakeNode("gfa1", "gfa"),
        "gfa2": FakeNode("gfa2", "gfa", enabled=False),
        "fvc": FakeNode("fvc", "fvc"),
    }
    assert select_nodes(nodes) == {nodes["gfa1"], nodes["fvc"]}
    assert select_nodes(nodes, category="gfa") == {nodes["gfa1"]}
    assert select_nodes(nodes, names="fvc", category="gfa") == {nodes["gfa1"], nodes["fvc"]}
    assert select_nodes(nodes, names=" gfa2 ,fvc") == {nodes["fvc"]}
    # A category that merely contains another one's name does not match.
    assert select_nodes(nodes, category="gfafvc") == set()
    assert select_nodes(nodes, names=["nope"]) == set()


def test_split_names():
    assert split_names(" a, b,,a ,c ") == ["a", "b", "c"]
    assert split_names(None) == []
    assert split_names(["x", " y"]) == ["x", "y"]


@given(st.lists(st.tuples(st.booleans(), st.integers(min_value=0, max_value=1000)), max_size=200))
def test_idpool_model(ops):
    """IDPool behaves like a simple reference model under random get/put sequences."""

    pool = IDPool()
    out: set[int] = set()
    returned: set[int] = set()
    largest = 0
    for is_get, pick in ops:
        if is_get or not out:
            value = pool.get()
            expected = min(returned) if returned else largest + 1
            assert value == expected
            assert value not in out
            returned.discard(value)
            largest = max(largest, value)
            out.add(value)
        else:
            value = sorted(out)[pick % len(out)]
            pool.put(value)
            out.remove(value)
            returned.add(value)
        assert pool.in_use == len(out)


def test_idpool_rejects_bad_put():
    pool = IDPool()
    first = pool.get()
    with pytest.raises(ValueError, match="never emitted"):
        pool.put(5)
    pool.put(first)
    with pytest.raises(ValueError, match="already returned"):
        pool.put(first)
    assert pool.get() == first
    assert pool.get() == 2


def test_fake_command_accepts_anything():
    command = FakeCommand()
    assert command.warning(text="x") is None
    assert command.finish("done", extra=1) is None
    assert command.anything_at_all() is None


async def test_subprocess_run_async_argv():
    # An argument with shell metacharacters is passed verbatim, never interpreted.
    proc = await subprocess_run_async(
        sys.executable, "-c", "import sys; print(sys.argv[1])", "a;b $(x)"
    )
    assert proc.returncode == 0
    assert proc.stdout_data == b"a;b $(x)\n"


async def test_subprocess_run_async_timeout_kills():
    with pytest.raises(asyncio.TimeoutError):
        await subprocess_run_async(
            sys.executable, "-c", "import time; time.sleep(30)", timeout=0.3
        )


async def test_subprocess_run_async_shell_requires_one_string():
    with pytest.raises(ValueError):
        await subprocess_run_async("echo", "x", shell=True)  # noqa: S604
    proc = await subprocess_run_async("echo hi", shell=True)  # noqa: S604
    assert proc.stdout_data == b"hi\n"
