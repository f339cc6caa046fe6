"""structlog set-up: JSON lines for daemons, a console renderer on a TTY."""

from __future__ import annotations

import asyncio
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


def dump_stacks_on_sigusr1(loop: asyncio.AbstractEventLoop) -> None:
    """`kill -USR1 PID` writes every thread's Python stack, then every asyncio task's, to
    stderr (the journal): how an operator, or a test that timed out, sees where a daemon that
    stopped logging is stuck. The threads come from a C-level handler, so they are written
    even when the event loop is blocked; the tasks once the loop runs the handler it chains."""
    loop.add_signal_handler(signal.SIGUSR1, _dump_tasks, loop)
    # stderr may be no file (captured in-process): then there is nowhere to dump to
    with contextlib.suppress(OSError, ValueError, AttributeError):
        faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True, chain=True)


def _dump_tasks(loop: asyncio.AbstractEventLoop) -> None:
    tasks = asyncio.all_tasks(loop)
    print(f"{len(tasks)} asyncio tasks (most recent call last):", file=sys.stderr)
    for task in tasks:
        coro = task.get_coro()
        if not hasattr(coro, "cr_frame"):  # compiled (grpc's Cython): no Python frames
            print(f"- {task.get_name()}: {coro!r}", file=sys.stderr)
            continue
        try:
            task.print_stack(limit=12, file=sys.stderr)
        except Exception as exc:  # a stack that cannot be read must not end the dump
            print(f"- {task.get_name()}: no stack ({exc})", file=sys.stderr)
    print("end of the asyncio tasks", file=sys.stderr, flush=True)
