"""FUSE tests: real mounts through the real CLI and daemon (skipped where /dev/fuse is missing)."""
