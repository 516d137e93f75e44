"""Component tests: one subsystem in-process (cache tiers, VFS) against test doubles and temporary directories."""
