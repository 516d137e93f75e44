"""The FUSE data path: pyfuse3 adapter (fuse_ops), semantics (vfs), the tree (namespace), read planning (reader)."""
