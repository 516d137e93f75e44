"""The live progress line of ``fluidfs load`` (files, bytes, MB/s, ETA), rendered by tqdm.

On a terminal the line is redrawn in place (``\\r`` + clear-to-end-of-line) at most every
``tty_interval`` seconds; on anything else (a pipe, a log file, CI) one plain line is printed
every ``log_interval`` seconds, so logs stay readable.  ``quiet`` prints nothing until the final
line.  Counters may be updated from worker threads (one lock); drawing happens only in
:meth:`Progress.tick` / :meth:`Progress.finish`, called by the owner.  The line itself is
``tqdm.format_meter``'s (bar, percentage, bytes, elapsed<ETA, rate) with the file counts appended.

Totals may grow while the tree is still being listed (the listing is streamed); until
:meth:`Progress.totals_final` is called the line shows ``>=`` file totals, ``listing...`` and no
bar or ETA.  The rate counts only bytes transferred in this run (bytes found already cached are
"done" but do not make a rerun look infinitely fast), over a sliding window of the last
``window`` seconds; the ETA is the bytes left at that rate.

Caveats: the line is one line; if something else writes to the same terminal meanwhile, the next
redraw simply continues on the new line.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TextIO

from tqdm import tqdm

from fluidfs.util.sizes import format_size


def final_line(files_cached: int, files_total: int, bytes_cached: int, bytes_total: int, seconds: float) -> str:
    """``cached 1234/1234 files, 5.6 GiB/5.6 GiB (100.0%) in 12.3s``."""
    pct = 100.0 * bytes_cached / bytes_total if bytes_total else (100.0 if files_cached == files_total else 0.0)
    if bytes_cached < bytes_total and pct > 99.9:
        pct = 99.9  # never round an incomplete load up to 100.0%
    return (
        f"cached {files_cached}/{files_total} files, {format_size(bytes_cached)}/{format_size(bytes_total)} "
        f"({pct:.1f}%) in {seconds:.1f}s"
    )


class Progress:
    """Counters plus their rendering.  See the module docstring."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        quiet: bool = False,
        tty: bool | None = None,
        tty_interval: float = 0.2,
        log_interval: float = 5.0,
        window: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet
        if tty is None:
            isatty = getattr(self.stream, "isatty", None)
            tty = bool(isatty and isatty())
        self.tty = tty
        self.interval = tty_interval if tty else log_interval
        self.window = window
        self.clock = clock
        self.started = clock()
        self._lock = threading.Lock()
        self.files_total = 0
        self.bytes_total = 0
        self.final_totals = False
        self.files_done = 0  # files finished (cached, skipped or failed)
        self.bytes_done = 0  # bytes finished (cached, skipped or failed)
        self.bytes_loaded = 0  # bytes transferred in this run
        self.files_failed = 0
        self._samples: deque[tuple[float, int]] = deque([(self.started, 0)])
        self._last_draw = self.started
        self._drawn = False  # a line is on the terminal (tty)

    # ------------------------------------------------------------------ counters

    def add_total(self, files: int, nbytes: int) -> None:
        with self._lock:
            self.files_total += files
            self.bytes_total += nbytes

    def totals_final(self) -> None:
        with self._lock:
            self.final_totals = True

    def advance(self, *, files: int = 0, nbytes: int = 0, loaded: int = 0, failed: int = 0) -> None:
        """``nbytes`` finished (cached or given up); ``loaded`` of them transferred now."""
        with self._lock:
            self.files_done += files
            self.bytes_done += nbytes
            self.bytes_loaded += loaded
            self.files_failed += failed

    def add_loaded(self, nbytes: int) -> None:
        """Bytes transferred for work not finished yet (smooths the rate of big files)."""
        with self._lock:
            self.bytes_loaded += nbytes

    # ------------------------------------------------------------------ derived values

    def rate(self) -> float:
        """Bytes per second transferred over the sliding window."""
        now = self.clock()
        with self._lock:
            loaded = self.bytes_loaded
            self._samples.append((now, loaded))
            while len(self._samples) > 2 and now - self._samples[1][0] > self.window:
                self._samples.popleft()
            t0, b0 = self._samples[0]
        dt = now - t0
        return (loaded - b0) / dt if dt > 0 else 0.0

    def line(self, width: int | None = None) -> str:
        """The status line (without ``\\r``), at most ``width`` characters."""
        rate = self.rate()
        with self._lock:
            ft, bt, fd, bd = self.files_total, self.bytes_total, self.files_done, self.bytes_done
            final, failed = self.final_totals, self.files_failed
        files = f"{fd}/{ft} files" if final else f"{fd}/>={ft} files"
        if failed:
            files += f", {failed} failed"
        if not final:
            files += ", listing..."
        text: str = tqdm.format_meter(
            min(bd, bt) if final else bd,
            bt if final and bt else None,
            self.elapsed(),
            ncols=width,
            unit="B",
            unit_scale=True,
            rate=rate,
            postfix=files,
            ascii=not self.tty,
        )
        return text[:width] if width is not None else text

    # ------------------------------------------------------------------ drawing

    def tick(self, force: bool = False) -> None:
        """Redraw if the interval has passed (or ``force``)."""
        if self.quiet:
            return
        now = self.clock()
        if not force and now - self._last_draw < self.interval:
            return
        self._last_draw = now
        if self.tty:
            width = shutil.get_terminal_size((100, 20)).columns - 1
            self.stream.write("\r" + self.line(width) + "\x1b[K")
            self._drawn = True
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def clear(self) -> None:
        """Remove the line from the terminal (before printing something else)."""
        if self.tty and self._drawn and not self.quiet:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False

    def elapsed(self) -> float:
        return self.clock() - self.started

    def finish(self, text: str, out: TextIO | None = None) -> None:
        """Clear the line and print the final line to ``out`` (default: the line's stream)."""
        self.clear()
        target = out if out is not None else self.stream
        target.write(text + "\n")
        target.flush()
