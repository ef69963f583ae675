"""A real test bed for fliswarm: Docker nodes in network namespaces, flicamera, tron.

`Testbed` (in `fliswarm_testbed.bed`) brings up several Docker engines, each in its own
network namespace with its own address, plus a private registry, on this machine.
"""

from __future__ import annotations

from .bed import Node, Testbed, default_names, ensure_packages


__all__ = ["Testbed", "Node", "default_names", "ensure_packages"]
