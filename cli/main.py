"""Entry point of the `novacron` console script."""

from __future__ import annotations

import sys
import time

from cli.client import EdgeClient
from cli.commands import Context
from cli.credentials import resolve
from cli.errors import CLIError
from cli.parser import build_parser, resolve_controller


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    return exc.code if isinstance(exc.code, int) else 2


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (0 ok, 1 error, 2 usage, 130 interrupted)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        labels = getattr(args, "labels", [])
        keys = [k for k, _ in labels]
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        if duplicates:
            parser.error(f"argument --label: duplicate key {duplicates[0]!r}")
    except SystemExit as exc:  # --help, --version, usage errors
        return _exit_code(exc)

    target = resolve_controller(args.controller)
    try:
        credentials = resolve(args.ca, args.cert, args.key, args.insecure, args.token)
        with EdgeClient(target, args.timeout, credentials) as client:
            ctx = Context(client, args.output, sys.stdout, sys.stderr, time.time())
            code: int = args.handler(ctx, args)
            return code
    except CLIError as err:
        sys.stderr.write(f"error: {err.code}: {err.message}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted\n")
        return 130
    except BrokenPipeError:  # e.g. `novacron vm list | head -1`
        return 0


if __name__ == "__main__":
    sys.exit(main())
