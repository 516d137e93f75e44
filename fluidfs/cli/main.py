"""The ``fluidfs`` command line: the parser, dispatch to one module per command, and exit codes.

User mistakes end with one line on stderr and a non-zero exit code, never a traceback
(the codes come from :func:`fluidfs.errors.exit_code`):

    0  success
    1  mount/unmount failure (mountpoint missing, busy or not empty, not a fluidfs mount, unsafe
       runtime directory, FUSE error, daemon died or does not answer)
    2  bad command line, bad Dataset document or configuration
    3  source failure (unreachable endpoint, wrong credentials, missing bucket/path)
  130  interrupted

Each command module (mount, umount, refresh, load, status, worker, demo) has ``add_parser(sub)``, which
registers its sub-command with ``handler=run``, and ``run(args, argv) -> exit code``; command
modules never import each other.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from fluidfs import __version__
from fluidfs.cli import demo, load, mount, refresh, status, umount, worker
from fluidfs.cli.options import Parser
from fluidfs.errors import EXIT_INTERRUPTED, FluidfsError, exit_code
from fluidfs.util.redact import RedactingFilter, redact_text

COMMANDS = (mount, umount, refresh, load, status, worker, demo)


def build_parser() -> Parser:
    p = Parser(prog="fluidfs", description="Mount datasets (S3, HTTP, local) as read-only directories.")
    p.add_argument("--version", action="version", version=f"fluidfs {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in COMMANDS:
        command.add_parser(sub)
    return p


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for handler in logging.getLogger().handlers:  # no presigned signature or password in any log line
        handler.addFilter(RedactingFilter())
    # library debug logs can carry signed headers and request details: keep them out
    for noisy in ("botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    _setup_logging(str(getattr(args, "log_level", "warning")))
    try:
        return int(args.handler(args, argv))
    except KeyboardInterrupt:
        print("fluidfs: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except FluidfsError as exc:
        print(f"fluidfs: error: {redact_text(str(exc))}", file=sys.stderr)
        return exit_code(exc)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
