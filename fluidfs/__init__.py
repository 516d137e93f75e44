"""fluidfs: mount any Dataset (S3, HTTP, local) as a read-only POSIX directory with a tiered cache."""

from __future__ import annotations

__version__ = "0.1.0"
