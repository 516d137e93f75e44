"""Source tests: each Source backend against a real server on loopback (moto, SeaweedFS, HTTP) or a directory."""
