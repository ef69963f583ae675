"""The one way a node is brought to its desired state (volumes, container, camera).

- `.desired`: what a node should look like, from the configuration (pure logic);
- `.ready`: waiting until flicamera accepts connections, then connecting;
- `.provisioner`: `Provisioner`, the one provisioning path used by the operator's commands
  and by the supervisor.
"""

from .desired import DesiredNode, container_drift, container_spec, desired_node
from .provisioner import Action, Provisioner, ProvisionError, Request, Result
from .ready import NotReadyError, wait_device_ready


__all__ = [
    "Action",
    "DesiredNode",
    "NotReadyError",
    "ProvisionError",
    "Provisioner",
    "Request",
    "Result",
    "container_drift",
    "container_spec",
    "desired_node",
    "wait_device_ready",
]
