"""structlog set-up: JSON lines for daemons, a console renderer on a TTY."""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import signal
import sys

import structlog


def configure_logging(level: str = "info", json: bool | None = None) -> None:
    if json is None:
        json = not sys.stderr.isatty()
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def dump_stacks_on_sigusr1() -> None:
    """`kill -USR1 PID` writes every thread's Python stack to stderr (the journal): how an
    operator, or a test that timed out, sees where a daemon that stopped logging is stuck.
    From a C-level handler, so it works even when the event loop is blocked."""
    # stderr may be no file (captured in-process): then there is nowhere to dump to
    with contextlib.suppress(OSError, ValueError, AttributeError):
        faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True, chain=False)
