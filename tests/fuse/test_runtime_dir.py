"""The runtime directory of a non-root user (records and default logs): $XDG_RUNTIME_DIR/fluidfs if
set, else /tmp/fluidfs-<uid>, created 0700 and refused when another user could have prepared it.

The CLI runs as an unused uid (``setpriv``), so these tests need root; they stop before mounting
anything, so they need no FUSE.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UID = 61000 + os.getpid() % 1000  # unused uid, one per test run (runs may overlap on one machine)

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv to run as another user"
)


def _python_for(uid: int) -> list[str] | None:
    """A Python interpreter (+ PYTHONPATH) that ``uid`` may run and that can import fluidfs."""
    site = [p for p in sys.path if p.endswith("site-packages")]
    candidates = [sys.executable, f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"]
    for exe in candidates:
        cmd = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", exe, "-c", "import fluidfs, trio"]
        env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": os.pathsep.join([str(ROOT), *site])}
        try:
            if subprocess.run(cmd, env=env, capture_output=True, timeout=60, cwd="/").returncode == 0:
                return [exe]
        except OSError:
            continue
    return None


@pytest.fixture(scope="module")
def python() -> list[str]:
    exe = _python_for(UID)
    if exe is None:
        pytest.skip(f"no Python interpreter that uid {UID} may run")
    return exe


@pytest.fixture
def world(tmp_path: Path) -> Iterator[Path]:
    """A directory every user can reach (pytest's tmp_path is private to root)."""
    d = Path(tempfile.mkdtemp(prefix="fluidfs-rtd-", dir="/tmp"))
    d.chmod(0o755)
    (d / "src").mkdir()
    (d / "src" / "a.txt").write_bytes(b"a")
    (d / "m").mkdir()
    os.chown(d / "m", UID, UID)
    yield d
    shutil.rmtree(d, ignore_errors=True)
    shutil.rmtree(f"/tmp/fluidfs-{UID}", ignore_errors=True)


def _as_user(python: list[str], *args: str, xdg: str | None = None) -> subprocess.CompletedProcess[str]:
    site = [p for p in sys.path if p.endswith("site-packages")]
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": "/",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), *site]),
    }
    if xdg is not None:
        env["XDG_RUNTIME_DIR"] = xdg
    cmd = ["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups", *python, "-m", "fluidfs", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, cwd="/")


def _cleanup_mount(path: Path) -> None:
    from fluidfs.util.mounts import is_mounted

    if is_mounted(str(path)):
        subprocess.run(["fusermount3", "-uz", str(path)], capture_output=True)


def test_a_runtime_dir_prepared_by_another_user_is_refused(python: list[str], world: Path) -> None:
    """Another user pre-creates /tmp/fluidfs-<uid> and plants a symlink where the daemon's log goes:
    the mount is refused with one line, and the victim's file is neither appended to nor chmod'ed."""
    victim = world / "victim.txt"
    victim.write_bytes(b"precious\n")
    os.chown(victim, UID, UID)
    victim.chmod(0o644)
    rtd = Path(f"/tmp/fluidfs-{UID}")
    rtd.mkdir(mode=0o777)
    rtd.chmod(0o777)  # owned by root: "another user"
    key = hashlib.sha256(str(world / "m").encode()).hexdigest()[:16]
    (rtd / f"{key}.log").symlink_to(victim)
    (rtd / f"{key}.json").symlink_to(victim)
    res = _as_user(python, "mount", str(world / "src"), str(world / "m"))
    _cleanup_mount(world / "m")
    assert res.returncode == 1, res.stderr
    assert res.stderr.strip() == (
        f"fluidfs: error: runtime directory {rtd} is owned by uid 0, not by you (uid {UID}): another user may "
        f"have prepared it; remove it, or set XDG_RUNTIME_DIR to a private directory"
    )
    assert victim.read_bytes() == b"precious\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644


def test_a_shared_writable_runtime_dir_is_refused(python: list[str], world: Path) -> None:
    rtd = Path(f"/tmp/fluidfs-{UID}")
    rtd.mkdir()
    os.chown(rtd, UID, UID)
    rtd.chmod(0o777)
    res = _as_user(python, "mount", str(world / "src"), str(world / "m"))
    _cleanup_mount(world / "m")
    assert res.returncode == 1, res.stderr
    assert "others can write to it" in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_runtime_dir_is_created_private_and_xdg_is_preferred(python: list[str], world: Path) -> None:
    # /tmp/fluidfs-<uid>: created 0700 (the mount itself may fail here: /dev/fuse may be root-only)
    _as_user(python, "mount", str(world / "src"), str(world / "m"))
    _cleanup_mount(world / "m")
    rtd = Path(f"/tmp/fluidfs-{UID}")
    st = rtd.lstat()
    assert stat.S_ISDIR(st.st_mode) and st.st_uid == UID and stat.S_IMODE(st.st_mode) == 0o700
    assert any(p.suffix == ".log" for p in rtd.iterdir())
    # $XDG_RUNTIME_DIR/fluidfs when XDG_RUNTIME_DIR is set
    xdg = world / "xdg"
    xdg.mkdir(mode=0o700)
    os.chown(xdg, UID, UID)
    _as_user(python, "mount", str(world / "src"), str(world / "m"), xdg=str(xdg))
    _cleanup_mount(world / "m")
    st = (xdg / "fluidfs").lstat()
    assert stat.S_ISDIR(st.st_mode) and st.st_uid == UID and stat.S_IMODE(st.st_mode) == 0o700
    assert any(p.suffix == ".log" for p in (xdg / "fluidfs").iterdir())
