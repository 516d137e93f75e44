"""Real FUSE: what a mount reports about itself — ``status`` after a remount over a warm SSD
cache, secrets in URLs never shown (xattr, runtime record, status, log), the readahead
numbers adding up, and the warning for an SSD tier that can never admit a block."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.support.fuse import Mount, fluidfs, needs_fuse
from tests.support.httpserver import RangeHTTPServer

pytestmark = needs_fuse

MiB = 1 << 20


def status(mnt: str) -> dict[str, object]:
    res = fluidfs("status", "--json", mnt)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)  # type: ignore[no-any-return]


def test_status_after_a_remount_over_a_warm_cache_shows_the_ssd_tier(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.bin").write_bytes(os.urandom(3 * MiB))
    flags = ("--cache-dir", str(tmp_path / "cache"), "--block-size", "1Mi", "--free-space-floor", "0")
    with Mount(str(src), str(tmp_path / "m"), *flags) as m:
        assert len((Path(m.mnt) / "f.bin").read_bytes()) == 3 * MiB
    with Mount(str(src), str(tmp_path / "m"), *flags) as m:
        ssd = status(m.mnt)["tiers"]["ssd"]  # type: ignore[index]
        assert ssd["used_bytes"] >= 3 * MiB, ssd  # before anything was read in this mount


def test_presigned_url_signature_never_shown(tmp_path: Path) -> None:
    www = tmp_path / "www"
    www.mkdir()
    (www / "shard.tar").write_bytes(os.urandom(MiB))
    secret = "0123456789abcdefSIGNATURE"
    log = tmp_path / "daemon.log"
    doc = tmp_path / "ds.yaml"  # a presigned URL belongs in a file, never on argv
    with RangeHTTPServer(www) as srv:
        url = f"{srv.url}shard.tar?X-Amz-Credential=AKIAEXAMPLE&X-Amz-Expires=600&X-Amz-Signature={secret}"
        doc.write_text(
            f"apiVersion: fluidfs.io/v1alpha1\nkind: Dataset\nmetadata: {{name: signed}}\n"
            f"spec:\n  mounts:\n    - mountPoint: '{url}'\n      path: /\n"
        )
        with Mount(str(doc), str(tmp_path / "m"), "--log-file", str(log), "--log-level", "debug") as m:
            f = Path(m.mnt) / "shard.tar"
            assert f.read_bytes() == (www / "shard.tar").read_bytes()
            xattr = os.getxattr(f, "user.fluidfs.source").decode()
            assert "X-Amz-Signature=REDACTED" in xattr and "X-Amz-Expires=600" in xattr
            rec = json.dumps(m.record())
            st = fluidfs("status", m.mnt)
        for text in (xattr, rec, st.stdout + st.stderr, log.read_text()):
            assert secret not in text and "AKIAEXAMPLE" not in text
        assert "X-Amz-Signature=REDACTED" in rec and "X-Amz-Signature=REDACTED" in st.stdout
        assert "X-Amz-Signature=REDACTED" in log.read_text()  # the URL is logged, redacted


def test_readahead_numbers_add_up(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "seq.bin").write_bytes(os.urandom(24 * MiB))
    with Mount(str(src), str(tmp_path / "m"), "--block-size", "1Mi", "--memory-size", "2Mi") as m:
        dd = subprocess.run(["dd", f"if={m.mnt}/seq.bin", "of=/dev/null", "bs=1M"], capture_output=True, timeout=120)
        assert dd.returncode == 0
        st = status(m.mnt)
        ra, source = st["readahead"], st["source"]
        assert ra["issued"] > 0 and ra["issued"] == ra["used"] + ra["wasted"]  # type: ignore[index]
        assert source["bytes"] <= 24 * MiB * 1.05  # type: ignore[index]  # no readahead fetched twice


def test_warning_when_the_ssd_tier_can_never_admit(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    res = fluidfs(
        "mount", str(src), str(tmp_path / "nowhere"), "--cache-dir", str(tmp_path / "c"), "--cache-size", "1Mi"
    )
    assert res.returncode == 1  # the mountpoint does not exist; the warning comes first
    assert "warning: the SSD cache quota (1 MiB) is smaller than one block" in res.stderr
    res = fluidfs(
        "mount", str(src), str(tmp_path / "nowhere"), "--cache-dir", str(tmp_path / "c"), "--free-space-floor", "100Ti"
    )
    assert "warning: the free-space floor (100 TiB) is not below the size of the disk" in res.stderr
