"""The in-house OCI container runtime: no daemon, an in-process API and a runc-compatible CLI."""
