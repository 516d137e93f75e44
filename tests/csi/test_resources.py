"""The node's memory and cache disk are shared by every dataset mounted on it, and the plugin keeps
them within their limits; each dataset's metrics are scraped from the plugin's one endpoint.

- memory: with ``--memory-limit``, a dataset whose memory tier does not fit next to the others is
  shrunk to what is left, and one for which not even the smallest tier is left is refused
  (RESOURCE_EXHAUSTED), before any daemon starts;
- cache disk: with ``--cache-capacity`` the SSD quotas of all datasets stay within the cap (the
  last ones shrunk, then left without an SSD tier); every daemon gets the free-space floor;
- a volume staged again with rotated credentials finds its cache warm (directories are named by
  the dataset, not by the credentials); unused cache directories are removed after their grace;
- the plugin's metrics page carries every daemon's metrics with a ``mount`` label, and
  fluidfs-controller's parser (``fluidfs.control.signals``) reads a dataset's signals from it.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc

from csi._gen import csi_pb2 as pb
from fluidfs.control import signals
from fluidfs.util.prom import parse_samples, total
from tests.support.csi import (
    BUCKET,
    DATASET,
    DEADLINE,
    SUB,
    TREE,
    Plugin,
    daemon_pids,
    expect_code,
    params,
    read_tree,
    stage_req,
)
from tests.support.fuse import needs_fuse

pytestmark = needs_fuse
MiB = 1 << 20
OTHER = {k[len("other/") :]: v for k, v in TREE.items() if k.startswith("other/")}


def metrics_url(p: Plugin) -> str:
    port = re.search(r"metrics on http://[\d.]+:(\d+)/", p.log_tail(400))
    assert port, p.log_tail()
    return f"http://127.0.0.1:{port.group(1)}/metrics"


def scrape(p: Plugin) -> str:
    with urllib.request.urlopen(metrics_url(p), timeout=30) as resp:
        return str(resp.read().decode())


def state(workdir: Path) -> dict[str, object]:
    return dict(json.loads((workdir / "state" / "state.json").read_text()))


def mount_of(workdir: Path, url_part: str) -> dict[str, object]:
    """The state's record of the mount whose Dataset document names ``url_part``."""
    for key, m in state(workdir)["mounts"].items():  # type: ignore[attr-defined]
        if f"{url_part}\n" in (workdir / "state" / "datasets" / key / "dataset.yaml").read_text():
            return dict(m)
    raise AssertionError(f"no mount of {url_part}")


def stage(
    p: Plugin, workdir: Path, vid: str, ctx: dict[str, str], s3: object, creds: dict[str, str] | None = None
) -> Path:
    stp = workdir / "staging" / vid
    stp.mkdir(parents=True, exist_ok=True)
    req = stage_req(vid, str(stp), ctx, s3)
    if creds is not None:
        req.secrets.clear()
        req.secrets.update(creds)
    p.node.NodeStageVolume(req, timeout=120)
    return stp


def unstage(p: Plugin, vid: str, stp: Path) -> None:
    p.node.NodeUnstageVolume(pb.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path=str(stp)), timeout=120)


def test_memory_tiers_fit_the_supervisors_limit(s3: object, workdir: Path, start_plugin: Callable[..., Plugin]) -> None:
    # 1280 MiB - 128 reserve: A's 512 + 128 overhead fit, B gets 384 of its 512, nothing is left for C
    p = start_plugin("--memory-limit", "1280Mi", "--metrics-addr", "127.0.0.1:0")
    urls = {"a": f"s3://{BUCKET}/train", "b": f"s3://{BUCKET}/train/sub", "c": f"s3://{BUCKET}/other"}
    stp_a = stage(p, workdir, "pv-a", params(s3, url=urls["a"], memorySize="512Mi"), s3)
    stp_b = stage(p, workdir, "pv-b", params(s3, url=urls["b"], memorySize="512Mi"), s3)
    assert read_tree(str(stp_a)) == DATASET and read_tree(str(stp_b)) == SUB
    assert mount_of(workdir, urls["a"])["memory"] == 512 * MiB
    assert mount_of(workdir, urls["b"])["memory"] == 384 * MiB
    assert "memory tier 512 MiB shrunk to 384 MiB" in p.log_tail(400)
    stp_c = workdir / "staging" / "pv-c"
    stp_c.mkdir(parents=True)
    e = expect_code(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        p.node.NodeStageVolume,
        stage_req("pv-c", str(stp_c), params(s3, url=urls["c"], memorySize="64Mi"), s3),
    )
    assert "memory limit" in (e.details() or "") and "mounter.resources.limits.memory" in (e.details() or "")
    assert len(daemon_pids(workdir / "state")) == 2, "no daemon was started for the refused dataset"
    # the daemons' own metrics say the same, through the plugin's page
    samples = parse_samples(scrape(p))
    mem = {
        s.labels["mount"]: s.value
        for s in samples
        if s.name == "fluidfs_cache_quota_bytes" and s.labels["tier"] == "mem"
    }
    keys = {k: mount_of(workdir, u)["key"] for k, u in urls.items() if k != "c"}
    assert mem == {keys["a"]: 512 * MiB, keys["b"]: 384 * MiB}
    assert total(samples, "fluidfs_csi_granted_bytes", resource="memory") == 896 * MiB
    assert total(samples, "fluidfs_csi_budget_adjustments_total", resource="memory", outcome="shrunk") == 1
    assert total(samples, "fluidfs_csi_budget_adjustments_total", resource="memory", outcome="refused") == 1
    # once A is gone, C fits
    unstage(p, "pv-a", stp_a)
    stage(p, workdir, "pv-c", params(s3, url=urls["c"], memorySize="64Mi"), s3)
    assert read_tree(str(stp_c)) == OTHER
    unstage(p, "pv-b", stp_b)
    unstage(p, "pv-c", stp_c)


def test_ssd_quotas_fit_the_node_cap_and_keep_the_floor(
    s3: object, workdir: Path, start_plugin: Callable[..., Plugin]
) -> None:
    p = start_plugin("--cache-capacity", "300Mi", "--cache-free-floor", "5%")
    urls = {"a": f"s3://{BUCKET}/train", "b": f"s3://{BUCKET}/train/sub", "c": f"s3://{BUCKET}/other"}
    stps = {k: stage(p, workdir, f"pv-{k}", params(s3, url=u, cacheSize="200Mi"), s3) for k, u in urls.items()}
    got = {k: mount_of(workdir, u) for k, u in urls.items()}
    assert [got[k]["cache"] for k in "abc"] == [200 * MiB, 100 * MiB, 0]
    assert got["c"]["cache_dir"] == "", "nothing left under the cap: the memory tier alone"
    assert read_tree(str(stps["c"])) == OTHER
    st = os.statvfs(workdir / "state" / "cache")
    floor = int(st.f_blocks * st.f_frsize * 0.05)
    for pid in daemon_pids(workdir / "state"):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        assert argv[argv.index("--free-space-floor") + 1] == str(floor)
    for k in "abc":
        unstage(p, f"pv-{k}", stps[k])


def test_rotated_credentials_find_the_cache_warm(
    s3: object, workdir: Path, start_plugin: Callable[..., Plugin]
) -> None:
    import boto3.session

    # a small free-space floor: the default (15 % of the file system) would leave a busy machine's
    # disk without an SSD tier, and this test is about the cache directory, not the floor
    p = start_plugin("--unstage-grace", "300", "--metrics-addr", "127.0.0.1:0", "--cache-free-floor", "64Mi")
    iam = boto3.session.Session(
        aws_access_key_id=s3.access_key,  # type: ignore[attr-defined]
        aws_secret_access_key=s3.secret_key,  # type: ignore[attr-defined]
        region_name="us-east-1",
    ).client("iam", endpoint_url=s3.endpoint)  # type: ignore[attr-defined]
    new = iam.create_access_key(UserName="fluidfs")["AccessKey"]
    rotated = {"accessKeyId": new["AccessKeyId"], "secretAccessKey": new["SecretAccessKey"]}
    ctx = params(s3, url=f"s3://{BUCKET}/train")
    stp = stage(p, workdir, "pv-r", ctx, s3)
    assert read_tree(str(stp)) == DATASET
    before = mount_of(workdir, f"s3://{BUCKET}/train")
    [old_pid] = daemon_pids(workdir / "state")
    unstage(p, "pv-r", stp)  # kept mounted for the grace period
    stp = stage(p, workdir, "pv-r", ctx, s3, creds=rotated)  # the job restarts with the rotated key
    after = mount_of(workdir, f"s3://{BUCKET}/train")
    assert after["key"] != before["key"], "other credentials: another mount"
    assert after["cache_dir"] == before["cache_dir"], "the same dataset: the same cache directory"
    assert old_pid not in daemon_pids(workdir / "state"), "the unused mount gave its directory up"
    assert read_tree(str(stp)) == DATASET
    samples = [s for s in parse_samples(scrape(p)) if s.labels.get("mount") == after["key"]]
    assert total(samples, "fluidfs_cache_hits_total", tier="ssd") > 0, "read from the warm SSD tier"
    assert total(samples, "fluidfs_source_bytes_total") < sum(len(v) for v in DATASET.values())
    # with the volume in use, another mount of the dataset (the old key) gets a directory of its own
    stp_old = stage(p, workdir, "pv-o", ctx, s3)
    assert mount_of_key(workdir, stp_old, "pv-o")["cache_dir"] == f"{after['cache_dir']}-2"
    unstage(p, "pv-o", stp_old)
    unstage(p, "pv-r", stp)


def mount_of_key(workdir: Path, stp: Path, vid: str) -> dict[str, object]:
    st = state(workdir)
    key = st["volumes"][vid]["key"]  # type: ignore[index]
    return dict(st["mounts"][key])  # type: ignore[index]


def test_unused_cache_directories_are_removed_after_their_grace(
    s3: object, workdir: Path, start_plugin: Callable[..., Plugin]
) -> None:
    p = start_plugin("--cache-gc-grace", "2s", "--check-interval", "0.5")
    keep = stage(p, workdir, "pv-k", params(s3, url=f"s3://{BUCKET}/train/sub"), s3)
    gone = stage(p, workdir, "pv-g", params(s3, url=f"s3://{BUCKET}/train"), s3)
    assert read_tree(str(gone)) == DATASET
    cache_dir = Path(str(mount_of(workdir, f"s3://{BUCKET}/train")["cache_dir"]))
    kept_dir = Path(str(mount_of(workdir, f"s3://{BUCKET}/train/sub")["cache_dir"]))
    assert cache_dir.is_dir()
    unstage(p, "pv-g", gone)
    assert cache_dir.is_dir(), "kept for a while: a job restarted soon finds it warm"
    deadline = time.monotonic() + DEADLINE
    while cache_dir.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not cache_dir.exists(), p.log_tail()
    assert kept_dir.is_dir() and read_tree(str(keep)) == SUB, "a directory in use stays"
    assert "unused for 2s; removed" in p.log_tail(400)
    unstage(p, "pv-k", keep)


def test_the_plugin_page_serves_every_datasets_metrics(
    s3: object, workdir: Path, start_plugin: Callable[..., Plugin]
) -> None:
    p = start_plugin("--metrics-addr", "127.0.0.1:0")
    a = stage(p, workdir, "pv-a", params(s3, url=f"s3://{BUCKET}/train", name="train"), s3)
    b = stage(p, workdir, "pv-b", params(s3, url=f"s3://{BUCKET}/other", name="other"), s3)
    assert read_tree(str(a)) == DATASET and read_tree(str(b)) == OTHER
    text = scrape(p)
    samples = parse_samples(text)
    keys = {s.labels["mount"] for s in samples if s.name == "fluidfs_csi_daemon_up" and s.value == 1}
    assert keys == set(state(workdir)["mounts"])  # type: ignore[arg-type]
    read = {s.labels["dataset"] for s in samples if s.name == "fluidfs_fuse_read_bytes_total" and s.value > 0}
    assert read == {"train", "other"}
    assert all("mount" in s.labels for s in samples if s.name.startswith(("fluidfs_cache_", "fluidfs_fuse_")))
    # what fluidfs-controller makes of the page for dataset "train": that mount's counters only
    target = signals.Target("fluidfs-system/fluidfs-mounter-x", signals.CLIENT, "node-1", metrics_url(p))
    snap = signals.snapshot(target, text, "train", time.time())
    assert not snap.error
    assert snap.counters["read_bytes"] >= sum(len(v) for v in DATASET.values())
    other = signals.snapshot(target, text, "other", time.time())
    assert other.counters["read_bytes"] < snap.counters["read_bytes"], "each dataset's own counters"
    assert snap.quota_bytes and snap.quota_bytes > 0
