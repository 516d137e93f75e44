"""CSI tests: the plugin's request logic, its gRPC server as a process, and the node lifecycle with real mounts."""
