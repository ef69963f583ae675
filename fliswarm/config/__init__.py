"""fliswarm's configuration: the file, its schema, and the settings as typed values.

- `.loader`: `load_config`, the YAML file read, validated and resolved (layouts, site);
- `.schema`: the JSON Schema (where every default is written), its validator and one-line
  error messages;
- `.settings`: `Settings`, the resolved configuration as frozen dataclasses.
"""

from .loader import (
    DOCKER_PORT,
    DOCKER_TLS_PORT,
    ConfigError,
    ConfigWarning,
    default_config_path,
    load_config,
)
from .settings import (
    ActorSettings,
    NodeSettings,
    PowerSettings,
    Settings,
    SshSettings,
    Timeouts,
    VolumeSettings,
)


__all__ = [
    "ActorSettings",
    "ConfigError",
    "ConfigWarning",
    "DOCKER_PORT",
    "DOCKER_TLS_PORT",
    "NodeSettings",
    "PowerSettings",
    "Settings",
    "SshSettings",
    "Timeouts",
    "VolumeSettings",
    "default_config_path",
    "load_config",
]
