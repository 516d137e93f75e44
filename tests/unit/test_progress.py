"""The progress line (rendered by tqdm) and the final line of ``fluidfs load``."""

from __future__ import annotations

import io

from fluidfs.warmup.progress import Progress, final_line


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_final_line_format() -> None:
    assert final_line(1234, 1234, 6012954214, 6012954214, 12.34) == (
        "cached 1234/1234 files, 5.6 GiB/5.6 GiB (100.0%) in 12.3s"
    )
    # an incomplete load never rounds up to 100.0%
    assert "(99.9%)" in final_line(9, 10, 10**9 - 1, 10**9, 1.0)


def test_progress_log_lines_rate_and_eta() -> None:
    out, clock = io.StringIO(), Clock()
    p = Progress(out, tty=False, log_interval=5.0, clock=clock)
    p.add_total(10, 100_000_000)
    p.tick(force=True)
    assert "listing" in out.getvalue() and "/>=10 files" in out.getvalue()  # totals not final yet
    p.totals_final()
    clock.t += 2.0
    p.advance(files=5, nbytes=50_000_000, loaded=50_000_000)
    p.tick()  # within the interval: nothing new
    assert out.getvalue().count("\n") == 1
    clock.t += 4.0
    p.tick()
    last = out.getvalue().splitlines()[-1]
    # files, bytes, percentage, elapsed<ETA and the rate of this run's transfers (50 MB in 6 s)
    assert "5/10 files" in last and " 50%|" in last and "50.0M/100M" in last
    assert "8.33MB/s" in last and "[00:06<00:06," in last
    assert "\r" not in out.getvalue()
    p.finish(final_line(10, 10, 100, 100, 1.0))
    assert out.getvalue().splitlines()[-1].startswith("cached 10/10 files")


def test_progress_tty_redraws_in_place_and_quiet() -> None:
    out, clock = io.StringIO(), Clock()
    p = Progress(out, tty=True, tty_interval=0.2, clock=clock)
    p.add_total(2, 2048)
    p.totals_final()
    for _ in range(3):
        clock.t += 0.5
        p.advance(files=0, nbytes=100, loaded=100)
        p.tick()
    text = out.getvalue()
    assert text.count("\r") == 3 and "\n" not in text and "%|" in text
    p.finish("done")
    assert out.getvalue().endswith("\r\x1b[Kdone\n")
    q = io.StringIO()
    pq = Progress(q, tty=True, quiet=True, clock=clock)
    pq.add_total(1, 1)
    pq.tick(force=True)
    pq.finish("only this")
    assert q.getvalue() == "only this\n"
