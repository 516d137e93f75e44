"""Frozen dataclasses describing a parsed Dataset (the output of ``fluidfs.spec``).

Kept separate from the parser so every layer can import the types without the YAML machinery.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


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
class Dataset:
    """A validated Dataset: one or more mounts unioned into one tree."""

    name: str
    mounts: tuple[MountSpec, ...]
    # settings the document gives (spec.cache, spec.metadata, ...): {MountConfig field: typed value};
    # a setting the document does not give is absent (the command line or the default applies)
    settings: Mapping[str, Any] = field(default_factory=dict)
    document: str = "<command line>"  # file name the dataset came from, for messages
    warnings: tuple[str, ...] = ()  # one line per ignored (Fluid) field
