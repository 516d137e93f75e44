"""The files of one dataset under ``<state-dir>/datasets/<key>/``: its Dataset document, secrets and identity.

Layout::

    datasets/<key>/dataset.yaml   the generated Dataset document (credentials as {file: ...})
    datasets/<key>/secrets/<k>    one 0600 file per CSI secret value (dir 0700)
    datasets/<key>/identity.json  the dataset's name and dataset key (``fluidfs_csi_dataset_info``)

Every file is written 0600 to a temporary file, then renamed (never seen half-written).  The
directory, credentials included, is removed with the dataset's mount (``csi/mounts.py``).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping

import grpc
import yaml

from fluidfs.spec import identity

from .volumes import DatasetRequest, RequestError, build_document

_SECRET_KEY_RE = re.compile(r"^[A-Za-z0-9._-]{1,253}$")
DOCUMENT_FILE = "dataset.yaml"
SECRETS_DIR = "secrets"
#: the dataset's name and key, for fluidfs_csi_dataset_info
IDENTITY_FILE = "identity.json"


def check_secret_keys(secrets: Mapping[str, str]) -> None:
    """INVALID_ARGUMENT unless every secret key is a safe file name."""
    if any(not _SECRET_KEY_RE.match(k) for k in secrets):
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "secret keys must match [A-Za-z0-9._-]+")


def write_private(path: str, data: str) -> None:
    """Write ``data`` to ``path``, mode 0600, through a temporary file and a rename."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def secret_files(ddir: str, secrets: Mapping[str, str]) -> dict[str, str]:
    """The path of each secret's file in the dataset directory ``ddir`` (not written yet)."""
    sdir = os.path.join(ddir, SECRETS_DIR)
    return {k: os.path.join(sdir, k) for k in secrets}


def write(ddir: str, req: DatasetRequest, secrets: Mapping[str, str], files: Mapping[str, str]) -> str:
    """Write the secrets (at ``files``), the Dataset document and the identity; returns the document's path."""
    sdir = os.path.join(ddir, SECRETS_DIR)
    os.makedirs(sdir, mode=0o700, exist_ok=True)
    os.chmod(ddir, 0o700)
    os.chmod(sdir, 0o700)
    for k, v in secrets.items():
        write_private(files[k], v)
    doc = build_document(req, files)
    source = os.path.join(ddir, DOCUMENT_FILE)
    write_private(source, yaml.safe_dump(doc, sort_keys=False))
    ident = {"dataset": req.name, "dataset_key": identity.key_of(req.dataset_digest())}
    write_private(os.path.join(ddir, IDENTITY_FILE), json.dumps(ident))
    return source


def read_identity(ddir: str) -> tuple[str, str]:
    """(dataset name, dataset key) of the dataset directory ``ddir``; OSError, ValueError, KeyError or
    TypeError if its identity file is missing or damaged."""
    with open(os.path.join(ddir, IDENTITY_FILE), encoding="utf-8") as f:
        ident = json.load(f)
    return str(ident["dataset"]), str(ident["dataset_key"])
