"""Source tests: each Source backend against a real server on loopback (moto, SeaweedFS, an HTTP server) or a real directory."""
