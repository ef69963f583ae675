"""Per-node ``environment``: schema, loader and the flicamera container specification."""

from __future__ import annotations

import pathlib

import pytest

from fliswarm.config import ConfigError, load_config
from fliswarm.config.settings import Settings
from fliswarm.provision.desired import container_spec


CONFIG = """
actor: {name: fliswarm, host: 127.0.0.1, port: 19996}
image: sdss/flicamera:latest
environment: {FLICAMERA_DATA_DIR: /data, SHARED: top}
nodes:
  gfa1: {host: 10.0.0.1, port: 19995, environment: {FLICAMERA_PORT: "19995", SHARED: gfa1}}
  gfa2: {host: 10.0.0.1, port: 19997}
enabled_nodes: [gfa1, gfa2]
"""


def _load(tmp_path: pathlib.Path, text: str = CONFIG) -> dict:
    path = tmp_path / "fliswarm.yaml"
    path.write_text(text)
    return load_config(path)


def test_node_environment_resolved(tmp_path: pathlib.Path) -> None:
    config = _load(tmp_path)
    assert config["nodes"]["gfa1"]["environment"] == {"FLICAMERA_PORT": "19995", "SHARED": "gfa1"}
    assert "environment" not in config["nodes"]["gfa2"]


def test_node_environment_in_container_spec(tmp_path: pathlib.Path) -> None:
    config = _load(tmp_path)
    settings = Settings.from_config(dict(config, observatory="APO"))
    one = container_spec(settings, "gfa1")["envs"]
    assert one == {
        "ACTOR_NAME": "gfa1",
        "OBSERVATORY": "APO",
        "FLICAMERA_DATA_DIR": "/data",
        "FLICAMERA_PORT": "19995",
        "SHARED": "gfa1",  # The node's value wins over the top-level one.
    }
    two = container_spec(settings, "gfa2")["envs"]
    assert two["SHARED"] == "top" and "FLICAMERA_PORT" not in two


def test_node_environment_values_must_be_strings(tmp_path: pathlib.Path) -> None:
    text = CONFIG.replace('FLICAMERA_PORT: "19995"', "FLICAMERA_PORT: 19995")
    with pytest.raises(ConfigError, match="nodes.gfa1.environment.FLICAMERA_PORT"):
        _load(tmp_path, text)
