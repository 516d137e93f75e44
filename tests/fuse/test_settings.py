"""Settings reach a real mount from every surface: a Dataset's spec.permissions and spec.metadata,
overridden by flags; a bad value never starts a daemon."""

from __future__ import annotations

import os
from pathlib import Path

from tests.support.fuse import Mount, fluidfs, needs_fuse

pytestmark = needs_fuse


def _dataset(tmp_path: Path, src: Path, permissions: str) -> Path:
    doc = tmp_path / "ds.yaml"
    doc.write_text(
        "apiVersion: fluidfs.io/v1alpha1\nkind: Dataset\nmetadata: {name: perms}\n"
        f"spec:\n  mounts: [{{mountPoint: '{src}', path: /}}]\n"
        f"  permissions: {permissions}\n  metadata: {{ttl: indefinite}}\n"
    )
    return doc


def test_permissions_from_the_dataset_and_flags_over_them(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"x")
    doc = _dataset(tmp_path, src, "{uid: 4294967294, gid: 4321, fileMode: 0604, dirMode: '0705'}")
    with Mount(str(doc), str(tmp_path / "m")) as m:
        f, d = os.stat(Path(m.mnt) / "d" / "f"), os.stat(Path(m.mnt) / "d")
        assert (f.st_uid, f.st_gid, f.st_mode & 0o7777) == (4294967294, 4321, 0o604)
        assert (d.st_uid, d.st_gid, d.st_mode & 0o7777) == (4294967294, 4321, 0o705)
    with Mount(str(doc), str(tmp_path / "m2"), "--uid", "7", "--file-mode", "0400") as m:
        f = os.stat(Path(m.mnt) / "d" / "f")
        assert (f.st_uid, f.st_gid, f.st_mode & 0o7777) == (7, 4321, 0o400)


def test_out_of_range_ids_and_modes_never_mount(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    mnt = tmp_path / "m"
    mnt.mkdir()
    cases = [
        (["--uid", "-1"], "--uid: must be a whole number from 0 to 4294967294, got '-1'"),
        (["--gid", "4294967295"], "--gid: must be a whole number from 0 to 4294967294, got '4294967295'"),
        (["--file-mode", "040444"], "--file-mode: must be octal permission bits from 0 to 7777, got '040444'"),
        (["--dir-mode", "0177777"], "--dir-mode: must be octal permission bits from 0 to 7777, got '0177777'"),
    ]
    for flags, problem in cases:
        res = fluidfs("mount", str(src), str(mnt), *flags)
        assert (res.returncode, res.stderr) == (2, f"fluidfs: error: {problem}\n")
        assert not os.path.ismount(mnt)
    doc = _dataset(tmp_path, src, "{fileMode: 0177777}")
    res = fluidfs("mount", str(doc), str(mnt))
    assert res.returncode == 2
    assert res.stderr == (
        f"fluidfs: error: {doc}: spec.permissions.fileMode: must be octal permission bits from 0 to 7777, got 0177777\n"
    )
    assert not os.path.ismount(mnt)
