"""``enable`` and ``disable`` survive restarts of fliswarm: the runtime-state file.

The file itself (`fliswarm.config.state`): written atomically, other sections kept, a corrupt
or unreadable file is one line and an empty state. Then the real daemon on the test bed:
``disable gfa2``, restart: ``enabledNodes`` lacks gfa2 and its container is left alone;
``enable gfa2``, restart: back, camera answering; a corrupt file: the configuration wins, with a
warning; ``enable --reset`` goes back to the configuration.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_client import bed_image, lines_of, running_daemon

from fliswarm.config.state import (
    FORMAT,
    NodeOverrides,
    RuntimeState,
    StateFileError,
    state_path,
)
from fliswarm_testbed import Testbed


# ------------------------------------------------------------------------- the file


def test_path_next_to_the_log(tmp_path: Path):
    assert state_path(tmp_path, "fliswarm") == tmp_path / "fliswarm-state.json"
    assert state_path(None, "fliswarm") is None
    assert not RuntimeState(None).kept
    RuntimeState(None).set_node_overrides(NodeOverrides.of(["a"], []))  # Nothing to write.


def test_written_atomically_and_read_back(tmp_path: Path):
    path = tmp_path / "logs" / "fliswarm-state.json"
    state = RuntimeState(path)
    assert state.load() is None and state.node_overrides() == NodeOverrides()

    overrides = NodeOverrides.of(["gfa1", "gfa2", "fvc"], ["gfa1", "fvc", "gfa3"])
    assert (overrides.disabled, overrides.enabled) == (("gfa2",), ("gfa3",))
    state.update("images", {"gfa1": "sha256:abc"})  # Another kind of state (issue 17).
    state.set_node_overrides(overrides)

    assert sorted(os.listdir(path.parent)) == [path.name]  # No temporary file left.
    document = json.loads(path.read_text())
    assert document["format"] == FORMAT
    assert document["nodes"] == {
        "config_enabled_nodes": ["gfa1", "gfa2", "fvc"],
        "enabled": ["gfa3"],
        "disabled": ["gfa2"],
    }

    again = RuntimeState(path)
    assert again.load() is None
    assert again.node_overrides() == overrides
    assert again.section("images") == {"gfa1": "sha256:abc"}
    again.set_node_overrides(NodeOverrides.of(["gfa1"], ["gfa1"]))  # None left: removed.
    document = json.loads(path.read_text())
    assert "nodes" not in document and document["images"] == {"gfa1": "sha256:abc"}


def test_a_failed_write_is_one_line_and_leaves_nothing_behind(tmp_path: Path):
    path = tmp_path / "fliswarm-state.json"
    path.mkdir()  # The rename over it fails (root ignores permissions).
    (path / "keep").write_text("x")
    state = RuntimeState(path)
    with pytest.raises(StateFileError) as raised:
        state.set_node_overrides(NodeOverrides.of(["gfa1", "gfa2"], ["gfa1"]))
    message = str(raised.value)
    assert message.startswith(f"cannot write the runtime-state file {path}: ")
    assert "\n" not in message
    assert sorted(os.listdir(tmp_path)) == [path.name]  # No temporary file left.
    assert (path / "keep").read_text() == "x"
    assert state.section("nodes") is None  # The state in memory is unchanged.


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"{not json", "is not valid JSON"),
        (b"\xff\xfe", "is not valid JSON"),
        (b"[1, 2]", "is not a JSON object"),
        (b'{"format": 99}', "has format 99; this fliswarm reads format 1"),
        (None, "cannot read the runtime-state file"),  # A directory where the file should be.
    ],
)
def test_an_unreadable_file_is_one_line_and_an_empty_state(
    tmp_path: Path, content: bytes | None, problem: str
):
    path = tmp_path / "fliswarm-state.json"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    state = RuntimeState(path)
    found = state.load()
    assert found is not None and problem in found and "\n" not in found
    assert found.endswith("Using the configuration only.")
    assert state.node_overrides() == NodeOverrides()
    enabled, problems = state.enabled_nodes(["gfa1", "gfa2"], ["gfa1", "gfa2", "fvc"])
    assert enabled == ["gfa1", "gfa2"] and problems == [found]


def test_a_malformed_nodes_section_leaves_the_configuration(tmp_path: Path):
    path = tmp_path / "fliswarm-state.json"
    path.write_text(json.dumps({"format": 1, "nodes": {"disabled": "gfa2"}}))
    state = RuntimeState(path)
    assert state.load() is None
    enabled, [problem] = state.enabled_nodes(["gfa1", "gfa2"], ["gfa1", "gfa2"])
    assert enabled == ["gfa1", "gfa2"]
    assert "'nodes.disabled' is not a list of node names" in problem


def test_overrides_apply_only_to_the_enabled_nodes_they_were_made_for():
    known = ["fvc", "gfa1", "gfa2", "gfa3"]
    overrides = NodeOverrides.of(["gfa1", "gfa2"], ["gfa1", "fvc"])
    assert overrides.apply(["gfa2", "gfa1"], known) == (["fvc", "gfa1"], [])

    # enabled_nodes changed since (or --nodes): the configuration wins.
    enabled, [problem] = overrides.apply(["gfa1", "gfa2", "gfa3"], known)
    assert enabled == ["gfa1", "gfa2", "gfa3"]
    assert "the configuration wins" in problem and "disabled at run time: gfa2" in problem

    # A node the configuration no longer has.
    enabled, [problem] = overrides.apply(["gfa1", "gfa2"], ["gfa1", "gfa2"])
    assert enabled == ["gfa1"] and "ignoring the nodes fvc" in problem


# -------------------------------------------------------------- the daemon on the bed


def status_lines(daemon) -> list[str]:
    done = daemon.send("status")
    assert done.returncode == 0, done.stdout + done.stderr
    return lines_of(done)


@pytest.mark.root
@pytest.mark.testbed
def test_disable_and_enable_survive_restarts(testbed: Testbed, tmp_path: Path):
    from fliswarm_testbed.fixtures import cleanup_node

    try:
        with running_daemon(
            testbed, bed_image(testbed), tmp_path, enabled_nodes=["gfa1", "gfa2"]
        ) as daemon:
            ready = daemon.send("reconnect", timeout=300)
            assert ready.returncode == 0, ready.stdout + ready.stderr
            container = daemon.container("gfa2")
            assert container is not None and container["State"]["Running"]

            # disable gfa2, restart: not enabled, its container left alone.
            disabled = daemon.send("disable", "gfa2")
            assert disabled.returncode == 0, disabled.stdout + disabled.stderr
            assert "i runtimeDisabled=gfa2" in lines_of(disabled)
            assert json.loads(daemon.state_file.read_text())["nodes"]["disabled"] == ["gfa2"]
            daemon.restart()
            lines = status_lines(daemon)
            assert "i enabledNodes=gfa1" in lines
            assert "i runtimeDisabled=gfa2" in lines
            assert any(line.startswith("i nodeState=gfa2,disabled,") for line in lines)
            assert not any(line.startswith("i node=gfa2,") for line in lines)
            after = daemon.container("gfa2")
            assert after is not None and after["State"]["Running"]
            assert after["Id"] == container["Id"]
            assert after["State"]["StartedAt"] == container["State"]["StartedAt"]
            talk = daemon.send("talk", "-n", "gfa2", "status")
            assert talk.returncode == 1 and "w text=gfa2: node is disabled." in lines_of(talk)

            # enable gfa2, restart: back, its camera answering.
            enabled = daemon.send("enable", "gfa2")
            assert enabled.returncode == 0, enabled.stdout + enabled.stderr
            daemon.restart()
            lines = status_lines(daemon)
            assert "i enabledNodes=gfa1,gfa2" in lines and "i runtimeDisabled" in lines
            talk = daemon.send("talk", "-n", "gfa2", "status")
            assert talk.returncode == 0, talk.stdout + talk.stderr
            assert any(line.startswith("i status=gfa2,gfa2,") for line in lines_of(talk))

            # A corrupt file: the configuration wins, with a warning.
            assert daemon.send("disable", "gfa2").returncode == 0
            daemon.stop()
            daemon.state_file.write_text('{"format": 1, "nodes": ')
            daemon.start()
            lines = status_lines(daemon)
            assert "i enabledNodes=gfa1,gfa2" in lines
            [warning] = [line for line in lines if "runtime-state file" in line]
            assert warning == (
                f"w text=the runtime-state file {daemon.state_file} is not valid JSON "
                "(Expecting value: line 1 column 24 (char 23)). Using the configuration only."
            )
            log = (daemon.log_dir / "fliswarm.log").read_text()
            assert f"the runtime-state file {daemon.state_file} is not valid JSON" in log

            # enable --reset: exactly the configuration's enabled_nodes again.
            assert daemon.send("disable", "gfa2").returncode == 0
            extra = daemon.send("enable", "fvc")
            assert "i runtimeEnabled=fvc" in lines_of(extra)
            reset = daemon.send("enable", "--reset")
            assert reset.returncode == 0, reset.stdout + reset.stderr
            lines = lines_of(reset)
            assert "i enabledNodes=gfa1,gfa2" in lines
            assert "i runtimeDisabled" in lines and "i runtimeEnabled" in lines
            assert "nodes" not in json.loads(daemon.state_file.read_text())
            refused = daemon.send("enable", "--reset", "gfa1")
            assert refused.returncode == 1
            assert lines_of(refused)[-1].startswith("f error=enable --reset takes no nodes")
    finally:
        testbed._parallel(lambda node: cleanup_node(testbed, node))
