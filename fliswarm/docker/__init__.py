"""The nodes' Docker engines: the only code of fliswarm that uses aiodocker.

- `.engine`: `Engine`, one engine, every call bounded in time and its errors typed; the event
  stream; the TCP keep-alive of long-lived connections;
- `.tls`: the TLS client context of an engine and plain-words TLS failures;
- `.containers`: the container settings as Docker API bodies, labels and config hash (pure);
- `.launch`: creating, starting and removing fliswarm's containers;
- `.volumes`: safe creation and re-creation of volumes;
- `.images`: image pulls with rate-limited progress;
- `.events`: `EventWatcher`, a node's container events, kept subscribed;
- `.ping`: ICMP reachability of a node;
- `.node`: `Node`, a node computer and its engine (the original fliswarm's API);
- `.report`: the status report of the nodes of one engine.
"""
