"""A real test bed for fliswarm: Docker nodes in network namespaces, flicamera, tron."""
