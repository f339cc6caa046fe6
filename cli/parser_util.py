"""Building blocks of the argparse tree: the help formatter, global options, groups and verbs."""

from __future__ import annotations

import argparse
from typing import TypeAlias

from cli import args as types
from cli.client import DEFAULT_CONTROLLER, DEFAULT_TIMEOUT
from cli.commands import Handler
from cli.render import FORMATS

ENV_CONTROLLER = "NOVACRON_CONTROLLER"

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)


def global_options(parser: argparse.ArgumentParser, top: bool) -> None:
    """Add the global options; below the top level they default to SUPPRESS so an option
    given before the command is not overwritten by the subcommand's default."""

    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    group = parser.add_argument_group("global options")
    group.add_argument(
        "--controller",
        metavar="HOST:PORT",
        type=types.controller,
        default=default(None),
        help=f"controller EdgeAPI address (env {ENV_CONTROLLER}, default {DEFAULT_CONTROLLER})",
    )
    group.add_argument(
        "-o",
        "--output",
        choices=FORMATS,
        default=default("table"),
        help="output format: table (default), json, yaml",
    )
    group.add_argument(
        "--ca", metavar="FILE", default=default(None),
        help="the installation CA (env NOVACRON_CA; default ~/.config/novacron/ca.crt)",
    )  # fmt: skip
    group.add_argument(
        "--cert", metavar="FILE", default=default(None),
        help="client certificate (env NOVACRON_CERT; default ~/.config/novacron/client.crt)",
    )  # fmt: skip
    group.add_argument(
        "--key", metavar="FILE", default=default(None),
        help="client key (env NOVACRON_KEY; default ~/.config/novacron/client.key)",
    )  # fmt: skip
    group.add_argument(
        "--token", metavar="TOKEN", default=default(None),
        help="a service token instead of a certificate (env NOVACRON_TOKEN; use the "
        "controller's join port, 7701)",
    )  # fmt: skip
    group.add_argument(
        "--insecure", action="store_true", default=default(False),
        help="plain text, no client certificate (a controller started with --insecure)",
    )  # fmt: skip
    group.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=types.positive_seconds,
        default=default(DEFAULT_TIMEOUT),
        help=f"deadline for each RPC (default {DEFAULT_TIMEOUT:g}); vm deploy adds its wait time",
    )


def sub(
    subparsers: Subparsers,
    name: str,
    help_text: str,
    examples: str,
    handler: Handler,
    aliases: tuple[str, ...] = (),
) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name,
        aliases=list(aliases),
        help=help_text,
        description=help_text,
        epilog="examples:\n" + examples,
        formatter_class=Formatter,
    )
    global_options(parser, top=False)
    parser.set_defaults(handler=handler)
    return parser


def group(subparsers: Subparsers, name: str, help_text: str, examples: str) -> Subparsers:
    parser = subparsers.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog="examples:\n" + examples,
        formatter_class=Formatter,
    )
    global_options(parser, top=False)
    return parser.add_subparsers(dest="verb", metavar="COMMAND", required=True)
