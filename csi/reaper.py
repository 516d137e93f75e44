"""PID 1 of the mount supervisor's container: runs the supervisor, restarts it when it exits,
and reaps every orphan (the detached dataset daemons are re-parented to it).

    python -m csi.reaper [--grace SECONDS] -- fluidfs-csi --mode mounter ...

Why: the dataset daemons run in the supervisor's container; if the supervisor itself were PID 1,
its crash would end the container and every daemon with it.  This process does nothing that can
fail: it imports only the standard library, holds no state, and answers only signals.  When the
supervisor exits (crash, OOM kill of that process, a signal) it is started again (after 1 s,
doubling to 30 s while it keeps failing fast) and adopts the running daemons from its state file
and the mount table.  SIGTERM/SIGINT (the container is stopped) are forwarded to the supervisor;
once it has exited (or after ``--grace`` seconds) the reaper exits, and with PID 1 gone the
kernel ends the daemons too: stopping the container is the one way to stop the mounts.

Not PID 1 (tests, a plain host), it makes itself a child subreaper (``PR_SET_CHILD_SUBREAPER``),
so the daemons are still re-parented to it while it runs.

Caveats: children are reaped by polling (every ``POLL`` seconds), so an exited daemon may stay a
zombie that long.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import signal
import sys
import time
from collections.abc import Sequence

POLL = 0.2
RESTART_MIN, RESTART_MAX = 1.0, 30.0
HEALTHY_RUN = 60.0  # a supervisor that ran this long resets the restart delay
PR_SET_CHILD_SUBREAPER = 36


def _say(msg: str) -> None:
    print(f"fluidfs-csi reaper: {msg}", file=sys.stderr, flush=True)


def become_subreaper() -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        _say(f"cannot become a child subreaper: {os.strerror(ctypes.get_errno())}")


class Reaper:
    def __init__(self, cmd: list[str], grace: float) -> None:
        self.cmd = cmd
        self.grace = grace
        self.child: int | None = None  # pid of the running supervisor
        self.started = 0.0
        self.delay = RESTART_MIN
        self.restart_at = 0.0
        self.stopping_since: float | None = None

    def on_signal(self, signum: int, _frame: object) -> None:
        if self.stopping_since is None:
            self.stopping_since = time.monotonic()
            _say(f"signal {signum}: stopping the supervisor")
        if self.child is not None:
            try:
                os.kill(self.child, signum)
            except OSError:
                pass

    def start_child(self) -> None:
        # posix_spawn, not subprocess: reap() collects every child itself, and subprocess would
        # wait for its own children behind our back.
        try:
            pid = os.posix_spawnp(
                self.cmd[0], self.cmd, os.environ, file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)]
            )
        except OSError as e:
            _say(f"cannot start {self.cmd[0]}: {e.strerror or e}")
            self.schedule_restart()
            return
        self.child = pid
        self.started = time.monotonic()
        _say(f"supervisor started (pid {pid})")

    def schedule_restart(self) -> None:
        self.restart_at = time.monotonic() + self.delay
        self.delay = min(RESTART_MAX, self.delay * 2)

    def reap(self) -> None:
        """Collect every exited child; notice when it is the supervisor."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.child:
                self.child = None
                if time.monotonic() - self.started >= HEALTHY_RUN:
                    self.delay = RESTART_MIN
                if self.stopping_since is None:
                    _say(f"supervisor exited ({_describe(status)}); restarting in {self.delay:.0f} s")
                    self.schedule_restart()

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.on_signal)
        if os.getpid() != 1:
            become_subreaper()
        self.start_child()
        while True:
            self.reap()
            now = time.monotonic()
            if self.stopping_since is not None:
                if self.child is None:
                    return 0
                if now - self.stopping_since > self.grace:
                    _say("supervisor did not stop in time; killing it")
                    try:
                        os.kill(self.child, signal.SIGKILL)
                    except OSError:
                        pass
                    self.stopping_since = now  # another grace period for the kill to land
            elif self.child is None and now >= self.restart_at:
                self.start_child()
            time.sleep(POLL)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m csi.reaper", description=__doc__.splitlines()[0])
    p.add_argument("--grace", type=float, default=20.0, help="seconds the supervisor gets to stop")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- the supervisor's command line")
    args = p.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        p.error("the supervisor's command is missing (after --)")
    return Reaper(cmd, args.grace).run()


if __name__ == "__main__":
    sys.exit(main())
