"""Real FUSE: the daemon's memory under 32 random readers stays within the documented bound
(docs/cache.md, "Memory"): RSS when idle + memory-size + 2 x inflight-memory, with a source far
enough away (latency, 8 MB/s per connection) that many fetches are in flight at once, and the
kernel's FUSE background queue raised as the daemon raises it."""

from __future__ import annotations

from pathlib import Path

from tests.support.fuse import fuse_control_fs, needs_fuse
from tools.rss_bound import measure

pytestmark = needs_fuse

MiB = 1 << 20


def test_peak_rss_under_32_random_readers_stays_within_the_bound(tmp_path: Path) -> None:
    with fuse_control_fs():
        r = measure("http", 128 * MiB, 64 * MiB, None, 4 * MiB, 32, 10.0, str(tmp_path), latency=0.05)
    assert r.reads > 32  # the readers really read
    assert r.block_data == 96 * MiB  # 64Mi memory tier + 32Mi in flight (its default: half of it)
    assert r.peak_rss <= r.bound, (r.peak_rss >> 20, r.bound >> 20)
