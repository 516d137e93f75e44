"""Mount configuration: the settings table (``MountConfig``), built once at start-up from defaults, the
Dataset and command-line flags (the command line wins), and validated there.

- :mod:`fluidfs.config.kinds`: value kinds -- parsing, ranges and display of one value;
- :mod:`fluidfs.config.table`: the row (:class:`Setting`) and its declaration (:func:`setting`);
- :mod:`fluidfs.config.mount`: ``MountConfig``, the table itself, and :func:`build_config`.

The package knows no document format and no command line: ``fluidfs.spec`` (Dataset fields),
``fluidfs.cli.options`` (flags), ``csi.volumes`` (volume attributes) and
``tools.gen_config_doc`` (the reference) derive their surfaces from the table.
"""

from __future__ import annotations

from fluidfs.config.mount import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_REQUEST_TIMEOUT,
    MAX_BLOCK_SIZE,
    MIN_BLOCK_SIZE,
    SETTINGS,
    GiB,
    KiB,
    MiB,
    MountConfig,
    build_config,
    validate,
)
from fluidfs.config.table import GROUPS, Setting

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_REQUEST_TIMEOUT",
    "GROUPS",
    "MAX_BLOCK_SIZE",
    "MIN_BLOCK_SIZE",
    "SETTINGS",
    "GiB",
    "KiB",
    "MiB",
    "MountConfig",
    "Setting",
    "build_config",
    "validate",
]
