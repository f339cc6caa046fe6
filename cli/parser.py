"""The argparse tree: every command with help text and examples.

Global options (--controller, -o, --timeout) are accepted before or after the command
(`novacron -o json vm list` and `novacron vm list -o json`), as kubectl users expect.
"""

from __future__ import annotations

import argparse
import os

from cli import args as types
from cli import commands
from cli import drain as drain_cmd
from cli.client import DEFAULT_CONTROLLER, DEFAULT_DEPLOY_WAIT
from cli.events import add_events_command
from cli.parser_migration import add_migration_group, add_orphan_verbs
from cli.parser_util import ENV_CONTROLLER, Formatter, global_options
from cli.parser_util import group as _group
from cli.parser_util import sub as _sub
from cli.placement import add_placement_options
from cli.security import add_security_commands
from cli.version import VERSION

MAIN_EPILOG = f"""\
output (-o):
  table   human-readable columns (default); `show` commands print a describe block
  json    protobuf messages as JSON with proto field names (memory_mib); enums as lowercase
          short names ("running", "not_ready", "mec"); 64-bit integers as numbers; every
          field present even at its default; timestamps in RFC 3339; lists as {{"items": [...]}}
  yaml    the same data as YAML

errors:
  printed on stderr as `error: CODE: message` (CODE is the gRPC status, e.g. NOT_FOUND) with
  exit status 1; usage errors exit 2.

environment:
  {ENV_CONTROLLER}   default for --controller (else {DEFAULT_CONTROLLER})

examples:
  novacron status
  novacron node list
  novacron vm deploy web-1 --image alpine-3.20 --vcpus 1 --memory-mib 256
  novacron vm list -o json
  novacron vm migrate web-1 --to mec-berlin-1
  novacron migration list
  novacron --controller 10.0.0.5:7700 vm show web-1
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="novacron",
        description="Operate NovaCron Edge: nodes and VMs through the controller's EdgeAPI.",
        epilog=MAIN_EPILOG,
        formatter_class=Formatter,
    )
    parser.add_argument("--version", action="version", version=f"novacron {VERSION}")
    global_options(parser, top=True)
    top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    _sub(
        top,
        "status",
        "show controller status: version, store, node and VM counts",
        "  novacron status\n  novacron status -o yaml\n",
        commands.status,
    )
    add_events_command(top)

    # -- node --
    node = _group(
        top, "node", "inspect edge nodes", "  novacron node list\n  novacron node show gw-1\n"
    )
    _sub(
        node,
        "list",
        "list nodes with condition, location, allocated/total vCPUs and memory, heartbeat age",
        "  novacron node list\n  novacron node list -o json | jq '.items[].info.node_id'\n",
        commands.node_list,
        aliases=("ls",),
    )
    show = _sub(
        node,
        "show",
        "describe one node: labels, capacity, allocation, utilisation, images",
        "  novacron node show gw-1\n  novacron node show gw-1 -o yaml\n",
        commands.node_show,
        aliases=("describe",),
    )
    show.add_argument("node", metavar="NODE", type=types.non_empty, help="node id")
    nearest = _sub(
        node,
        "nearest",
        "nodes nearest to a location, with the physical-bound RTT estimate (fiber + access)",
        "  novacron node nearest 48.85,2.35\n  novacron node nearest 40.71,-74.0 -n 3 -o json\n",
        commands.node_nearest,
    )
    nearest.add_argument("location", metavar="LAT,LON", type=types.lat_lon)
    nearest.add_argument("-n", type=types.positive_u32, default=5, help="how many (default 5)")
    for verb, handler, what in (
        ("cordon", commands.node_cordon, "place no new VMs on a node (running VMs stay)"),
        ("uncordon", commands.node_uncordon, "allow placement on a node again"),
        (
            "rotate-key",
            commands.node_rotate_key,
            "new WireGuard key pair on the node; its peers learn the new public key",
        ),
    ):
        sub = _sub(node, verb, what, f"  novacron node {verb} mec-berlin-1\n", handler)
        sub.add_argument("node", metavar="NODE", type=types.non_empty, help="node id")
    drain = _sub(
        node,
        "drain",
        "cordon a node and live-migrate its VMs off through placement, a few at a time; "
        "follows the moves until done (exit 1 if a VM could not move)",
        "  novacron node drain mec-berlin-1\n  novacron node drain gw-7 --parallel 2 --no-wait\n"
        "  novacron node drain gw-7 --cold\n",
        drain_cmd.node_drain,
    )
    drain.add_argument("node", metavar="NODE", type=types.non_empty, help="node id")
    drain.add_argument(
        "--parallel", type=types.positive_u32, default=1, metavar="N",
        help="migrations at a time (default 1; at most 16)",
    )  # fmt: skip
    drain.add_argument(
        "--cold",
        action="store_true",
        help="cold migrations (the guests shut down and boot on their new node): for guests "
        "that live migration cannot move, e.g. busy ones on a slow link",
    )
    drain.add_argument(
        "--no-wait", action="store_true", help="start the drain and return; see `node show`"
    )
    fail_over = _sub(
        node,
        "fail-over",
        "recreate a suspect or lost node's VMs elsewhere now (each VM once its stop_after has "
        "passed since the node was last heard, or at once with --node-is-dead)",
        "  novacron node fail-over gw-7\n"
        "  # the site is known to be down (power cut): do not wait for stop_after\n"
        "  novacron node fail-over gw-7 --node-is-dead\n",
        commands.node_fail_over,
    )
    fail_over.add_argument("node", metavar="NODE", type=types.non_empty, help="node id")
    fail_over.add_argument(
        "--node-is-dead",
        action="store_true",
        help="you vouch that the node is powered off: its VMs count as stopped",
    )

    # -- vm --
    vm = _group(
        top,
        "vm",
        "deploy and manage virtual machines",
        "  novacron vm deploy web-1 --image alpine-3.20 --vcpus 1 --memory-mib 256\n"
        "  novacron vm list --node gw-1\n"
        "  novacron vm console web-1 --bytes 4096\n"
        "  novacron vm orphans\n",
    )
    deploy = _sub(
        vm,
        "deploy",
        "deploy a VM and wait until it runs (a spinner shows progress on a terminal)",
        "  novacron vm deploy web-1 --image alpine-3.20 --vcpus 1 --memory-mib 256\n"
        "  novacron vm deploy ar-1 --image tiny --vcpus 1 --memory-mib 128 \\\n"
        "      --near 48.85,2.35 --max-latency-ms 10 --country DE,FR --edge-type mec\n"
        "  novacron vm deploy cam-7 --image yolo-arm64 --vcpus 2 --memory-mib 1024 \\\n"
        "      --label app=vision --label tier=edge --wait-timeout 120\n"
        "  # retry safely after a timeout or a lost connection: reuse the printed request_id\n"
        "  novacron vm deploy web-1 --image alpine-3.20 --vcpus 1 --memory-mib 256 \\\n"
        "      --request-id 3f0c9a52-...\n"
        "  # five replicas web-1..web-5, planned together, never two on one node\n"
        "  novacron vm deploy web --count 5 --image tiny --vcpus 1 --memory-mib 128 \\\n"
        "      --spread-group web\n",
        commands.vm_deploy,
    )
    deploy.add_argument("name", metavar="NAME", type=types.non_empty, help="VM name")
    deploy.add_argument("--image", required=True, type=types.non_empty, help="image name")
    deploy.add_argument(
        "--vcpus", required=True, type=types.positive_u32, metavar="N", help="virtual CPUs (> 0)"
    )
    deploy.add_argument(
        "--memory-mib",
        required=True,
        type=types.positive_u64,
        metavar="M",
        help="memory in MiB (> 0)",
    )
    deploy.add_argument(
        "--label",
        dest="labels",
        action="append",
        type=types.label,
        default=[],
        metavar="KEY=VALUE",
        help="VM label (repeatable)",
    )
    deploy.add_argument(
        "--count",
        type=types.batch_count,
        default=1,
        metavar="N",
        help="deploy N VMs named NAME-1..NAME-N, planned together (all fit or none is "
        "deployed; the planner moves and swaps to find room one-by-one placement misses)",
    )
    deploy.add_argument(
        "--request-id",
        type=types.non_empty,
        metavar="ID",
        help="idempotency key; a new UUID is generated (and printed on stderr) if omitted",
    )
    deploy.add_argument(
        "--bandwidth-mbps",
        type=types.non_negative_u32,
        default=0,
        metavar="N",
        help="cap on the VM's network, each direction (0 = none)",
    )
    add_placement_options(deploy)
    deploy.add_argument(
        "--replace-after",
        type=types.seconds_or_never,
        metavar="S|never",
        help="when its node is lost: recreate the VM elsewhere S seconds later, or never "
        "(wait for the node); default: the controller's controller.failover.replace_after",
    )
    deploy.add_argument(
        "--stop-after",
        type=types.seconds_or_never,
        metavar="S|never",
        help="its node's agent pauses the VM after S seconds without the controller, so a "
        "replacement never runs beside it (never: keep running; then only an operator's "
        "`node fail-over --node-is-dead` replaces it); default: controller.failover.stop_after",
    )
    deploy.add_argument(
        "--wait-timeout",
        type=types.non_negative_u32,
        default=0,
        metavar="S",
        help="seconds the controller waits for the VM to run (0 = controller default; "
        f"the CLI then allows {DEFAULT_DEPLOY_WAIT}s)",
    )

    vm_list = _sub(
        vm,
        "list",
        "list VMs (ID is shortened to 8 characters; -o json has the full id)",
        "  novacron vm list\n  novacron vm list --node gw-1 -o yaml\n",
        commands.vm_list,
        aliases=("ls",),
    )
    vm_list.add_argument("--node", metavar="NODE", help="only VMs placed on this node")

    for verb, help_text, handler, aliases in (
        ("show", "describe one VM", commands.vm_show, ("describe",)),
        ("suspend", "pause a running VM", commands.vm_suspend, ()),
        ("resume", "resume a suspended VM", commands.vm_resume, ()),
        ("delete", "delete a VM (its desired state becomes deleted)", commands.vm_delete, ("rm",)),
    ):
        sub = _sub(
            vm,
            verb,
            help_text,
            f"  novacron vm {verb} web-1\n  novacron vm {verb} 3f0c9a52 -o json\n",
            handler,
            aliases=aliases,
        )
        sub.add_argument("vm", metavar="NAME|ID", type=types.non_empty, help="VM name or id")

    migrate = _sub(
        vm,
        "migrate",
        "live-migrate a running VM to another node; its address follows it over the mesh "
        "(progress: a bar on a terminal, otherwise a line per phase and per tenth of the bytes; "
        "none with -o json or yaml)",
        "  novacron vm migrate web-1                 # to the best other node by placement\n"
        "  novacron vm migrate web-1 --to cloud-frankfurt --bandwidth-mbit 200\n",
        commands.vm_migrate,
        aliases=("move",),
    )
    migrate.add_argument("vm", metavar="NAME|ID", type=types.non_empty, help="VM name or id")
    migrate.add_argument(
        "--to",
        dest="target",
        metavar="NODE",
        default="",
        help="target node (default: placement picks the best node other than the current one; "
        "a named node must still pass every placement filter, e.g. data residency)",
    )
    migrate.add_argument(
        "--bandwidth-mbit",
        type=types.non_negative_u32,
        default=0,
        metavar="N",
        help="cap on the migration stream (0 = only the node's QoS migration class)",
    )
    migrate.add_argument(
        "--max-downtime-ms",
        type=types.non_negative_u32,
        default=0,
        metavar="MS",
        help="longest pause aimed for at the switch-over (0 = controller.max_downtime, 150 ms); "
        "a pre-copy that cannot meet it has the pause raised step by step, then is aborted "
        "(the VM keeps running where it was)",
    )
    migrate.add_argument(
        "--postcopy",
        action="store_true",
        help="post-copy from the start: the guest runs on the target at once and pulls its "
        "memory from the paused source; safe for a busy guest on a slow link (a long pre-copy "
        "under TCG can corrupt it, see docs/migration.md), but the VM is lost if the link "
        "fails mid-way. The bandwidth cap applies to both phases",
    )
    migrate.add_argument(
        "--mode",
        choices=("live", "cold", "snapshot"),
        default="live",
        help="live (default): the guest runs throughout; cold: shut down (ACPI, forced after "
        "controller.cold_shutdown_timeout), disk copied, booted on the target; snapshot: saved "
        "with its memory and device state, copied, restored on the target where it was (the "
        "guest is paused meanwhile). Until the target runs it, the source keeps a startable "
        "copy, and any failure runs it there again",
    )
    migrate.add_argument(
        "--reason",
        default="",
        help='why, kept on the migration record (e.g. "load_balancing"; default: how the '
        "target was chosen)",
    )
    migrate.add_argument(
        "--priority", type=int, default=0, help="kept on the migration record (0 = normal)"
    )
    migrate.add_argument(
        "--wait-timeout",
        type=types.non_negative_u32,
        default=0,
        metavar="S",
        help="seconds the controller allows the migration (0 = its default)",
    )

    add_orphan_verbs(vm)

    console = _sub(
        vm,
        "console",
        "print the tail of the guest's serial console log",
        "  novacron vm console web-1\n  novacron vm console web-1 --bytes 4096\n",
        commands.vm_console,
    )
    console.add_argument("vm", metavar="NAME|ID", type=types.non_empty, help="VM name or id")
    console.add_argument(
        "--bytes",
        type=types.non_negative_u32,
        default=0,
        metavar="N",
        help="how much of the tail to print (0 = controller default, 64 KiB)",
    )
    add_migration_group(top)

    # -- placement --
    placement_group = _group(
        top,
        "placement",
        "ask where a VM would go, and why",
        "  novacron placement explain --image tiny --vcpus 1 --memory-mib 128 --near 48.85,2.35\n",
    )
    explain = _sub(
        placement_group,
        "explain",
        "the decision DeployVM would take now: the best k nodes with every scorer's raw and "
        "weighted value, and why each other node was rejected (nothing is deployed)",
        "  novacron placement explain --image tiny --vcpus 1 --memory-mib 128 --near 48.85,2.35\n"
        "  novacron placement explain --image tiny --vcpus 2 --memory-mib 4096 \\\n"
        "      --country DE,FR --max-latency-ms 50 -k 5 -o json\n",
        commands.placement_explain,
    )
    explain.add_argument("--name", help="VM name (optional)")
    explain.add_argument("--image", required=True, type=types.non_empty, help="image name")
    explain.add_argument("--vcpus", required=True, type=types.positive_u32, metavar="N")
    explain.add_argument("--memory-mib", required=True, type=types.positive_u64, metavar="M")
    explain.add_argument("-k", type=types.positive_u32, default=3, help="candidates to show")
    add_placement_options(explain)
    add_security_commands(top, node)
    return parser


def resolve_controller(value: str | None) -> str:
    """--controller, else $NOVACRON_CONTROLLER, else the default; read at run time."""
    return value or os.environ.get(ENV_CONTROLLER, "").strip() or DEFAULT_CONTROLLER
