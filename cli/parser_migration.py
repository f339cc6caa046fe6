"""The `migration` group and the orphan verbs of `vm` (kept apart so parser.py stays readable)."""

from __future__ import annotations

from cli import args as types
from cli import commands
from cli.parser_util import Subparsers, group, sub


def add_migration_group(top: Subparsers) -> None:
    migration = group(
        top,
        "migration",
        "inspect live migrations: persisted jobs with named phases",
        "  novacron migration list\n"
        "  novacron migration list --vm web-1 -o json\n"
        "  novacron migration get 5d41402a\n"
        "  novacron migration get --vm web-1\n"
        "\nphases (with the progress each stands for):\n"
        "  pre_checks 10%, snapshot 30%, transfer 70% (the memory copy), switchover 90% (the VM\n"
        "  now lives on the target), cleanup 100%; then succeeded or failed\n",
    )
    listing = sub(
        migration,
        "list",
        "list migrations, newest first (ID is shortened to 8 characters; -o json has the full "
        "record; BYTES is transferred/total; DURATION is so far for one still running)",
        "  novacron migration list\n"
        "  novacron migration list --vm web-1\n"
        "  novacron migration list -o json | jq '.items[] | select(.active)'\n",
        commands.migration_list,
        aliases=("ls",),
    )
    listing.add_argument(
        "--vm", metavar="NAME|ID", default="", help="only this VM's migrations (name or id)"
    )
    get = sub(
        migration,
        "get",
        "describe one migration: every field and its phase timeline (when each phase began, "
        "how long it took)",
        "  novacron migration get 5d41402a          # an id or a unique prefix of one\n"
        "  novacron migration get --vm web-1        # the VM's latest migration\n"
        "  novacron migration get --vm web-1 -o yaml\n",
        commands.migration_get,
        aliases=("show", "describe"),
    )
    which = get.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "migration_id", metavar="ID", nargs="?", default="", help="migration id (or prefix)"
    )
    which.add_argument("--vm", metavar="NAME|ID", default="", help="the VM's latest migration")


def add_orphan_verbs(vm: Subparsers) -> None:
    sub(
        vm,
        "orphans",
        "list orphans: VMs that nodes run and the controller has no record of (e.g. after its "
        "state dir was lost); they are left running until adopted or deleted",
        "  novacron vm orphans\n  novacron vm orphans -o json\n",
        commands.vm_orphans,
    )
    adopt = sub(
        vm,
        "adopt",
        "adopt an orphan: it becomes a managed VM where it runs, at the generation it has",
        "  novacron vm orphans\n  novacron vm adopt mec-berlin-1 web-1\n",
        commands.vm_adopt,
    )
    delete = sub(
        vm,
        "delete-orphan",
        "destroy an orphan on its node (the node must be connected); nothing is asked",
        "  novacron vm delete-orphan mec-berlin-1 web-1\n"
        "  novacron vm delete-orphan mec-berlin-1 3f0c9a52-1111-4222-8333-444455556666\n",
        commands.vm_delete_orphan,
    )
    for parser in (adopt, delete):
        parser.add_argument("node", metavar="NODE", type=types.non_empty, help="node id")
        parser.add_argument(
            "vm", metavar="NAME|ID", type=types.non_empty, help="the orphan's name or id"
        )
