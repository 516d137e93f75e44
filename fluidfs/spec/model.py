"""Frozen dataclasses describing a parsed Dataset (the output of ``fluidfs.spec``).

Kept separate from the parser so every layer can import the types without the YAML machinery.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class SecretRef:
    """Where one credential value comes from.  Exactly one of the three forms is set.

    - ``env``: name of an environment variable of the fluidfs process;
    - ``file``: path of a file whose content (stripped of trailing newline) is the value;
    - ``secret_name``/``secret_key``: a Kubernetes Secret key; the CSI plugin resolves it
      (it writes the value to a private file and rewrites the ref to ``file``).
    """

    env: str = ""
    file: str = ""
    secret_name: str = ""
    secret_key: str = ""


@dataclass(frozen=True, slots=True)
class MountSpec:
    """One source in a Dataset, and where it appears in the mounted tree."""

    name: str  # unique within the dataset
    url: str  # the mountPoint as given (normalised: local:// and file:// -> file:///abs)
    scheme: str  # "s3" | "http" | "https" | "file"
    path: str  # where it appears: "/" or "/a/b" (absolute, normalised, no "..")
    options: Mapping[str, str] = field(default_factory=dict)
    # credential name -> reference.  Names: access_key_id, secret_access_key, session_token
    # (S3); username, password, bearer_token (HTTP).
    credentials: Mapping[str, SecretRef] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CacheSpec:
    """``spec.cache``: every field None means "not set here" (CLI flag or default applies)."""

    directory: str | None = None
    size: int | None = None  # SSD tier quota, bytes
    memory_size: int | None = None  # MEM tier quota, bytes
    block_size: int | None = None  # bytes
    eviction: str | None = None  # "lru" | "none"
    readahead: int | None = None  # max readahead window, bytes
    free_space_floor: int | None = None  # never fill the cache disk below this, bytes
    sibling_prefetch: int | None = None  # small siblings prefetched per small-file open
    metrics_addr: str | None = None  # "HOST:PORT" or "none"


@dataclass(frozen=True, slots=True)
class MetadataSpec:
    """``spec.metadata``: TTLs in seconds; ``math.inf`` means indefinite; None = default."""

    ttl: float | None = None
    negative_ttl: float | None = None


@dataclass(frozen=True, slots=True)
class Dataset:
    """A validated Dataset: one or more mounts unioned into one tree."""

    name: str
    mounts: tuple[MountSpec, ...]
    cache: CacheSpec = CacheSpec()
    metadata: MetadataSpec = MetadataSpec()
    document: str = "<command line>"  # file name the dataset came from, for messages
    warnings: tuple[str, ...] = ()  # one line per ignored (Fluid) field
