"""`Node`, as the original fliswarm had it (``from fliswarm.node import Node``).

The code lives in `fliswarm.docker.node`, with the rest of the Docker engine layer.
"""

from fliswarm.docker.node import DEFAULT_DOCKER_PORT, Node


__all__ = ["Node", "DEFAULT_DOCKER_PORT"]
