"""novacron-controller: the daemon's command line.

Start-up on a state dir without `controller.db` creates the database (the store is opened with
`create=True`), so `novacron-controller --insecure --state-dir DIR` works on a fresh host as the
README shows; such a controller is a new installation (`store.created`, with a new
`installation_id`). Creating it is safe because absence is not deletion: agents that remember
another installation refuse its destructive reconcile unless the operator passed
`--new-installation` (config `new_installation`), in which case they are taken over and their VMs
are shown as orphans, never deleted. A database that is there but unreadable (`StoreCorrupt`), of
an unknown schema, or otherwise refused stops start-up: printed as `novacron-controller: <message>`
(naming the file), exit status 2.

`novacron-controller init --state-dir DIR --advertise-address ADDR [...]` creates the
installation's CA and the controller's serving certificate once (controller/pki.py) and prints
the CA's pin; it refuses a state dir that has a CA already.

`novacron-controller config check FILE [flags]` prints the effective configuration, each key with
its source (default, file, env, flag); exit 2 with the errors if FILE is refused
(docs/configuration.md).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sqlite3
import sys
from pathlib import Path

from controller import __version__, config_check, pki_cli
from controller.config import load_config
from controller.server import ControllerServer
from controller.unit import ControllerUnit
from shared.errors import NovaCronError
from shared.logging import configure_logging, dump_stacks_on_sigusr1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="novacron-controller",
        description="NovaCron Edge controller: placement, desired state and agent sessions. "
        "Settings come from --config (the `controller:` block), then NOVACRON_CONTROLLER_<KEY> "
        "environment variables, then these flags.",
    )
    p.add_argument("--config", type=Path, help="YAML file with a `controller:` block")
    p.add_argument("--listen", help="HOST:PORT for agents and clients (default 127.0.0.1:7700)")
    p.add_argument("--state-dir", help="where the SQLite state lives")
    p.add_argument(
        "--enrol-listen", help="HOST:PORT of the join port (default: --listen's port + 1)"
    )
    p.add_argument("--heartbeat-interval", help="agents' heartbeat interval, e.g. 5s")
    p.add_argument("--deploy-timeout", help="default wait for a VM to run, e.g. 120s")
    p.add_argument("--controller-id", help="stable id of this controller")
    p.add_argument("--metrics-listen", help='Prometheus HOST:PORT (default 127.0.0.1:9470, "" off)')
    p.add_argument(
        "--dashboard-listen", help='web dashboard HOST:PORT (default 127.0.0.1:7780, "" off)'
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="serve without TLS or authentication (local development only)",
    )
    p.add_argument(
        "--new-installation",
        action="store_true",
        default=None,
        help="this state dir starts a new installation: agents that remember another "
        "installation are taken over (their VMs shown as orphans, never deleted)",
    )
    p.add_argument("--log-level", help="debug, info, warning, error")
    p.add_argument("--log-format", choices=["json", "console"], help="default: console on a TTY")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p.parse_args(argv)


async def serve(server: ControllerServer) -> None:
    unit = ControllerUnit(server)  # systemd: READY=1, STATUS=, WATCHDOG=1 (controller/unit.py)
    # before READY=1: systemd may send SIGTERM the moment it reads it, and that must stop us
    # gracefully, not kill us with the default action
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    dump_stacks_on_sigusr1(loop)
    await server.start()
    unit.serving()
    waiter = asyncio.create_task(server.wait())
    await asyncio.wait([waiter, asyncio.create_task(stop.wait())], return_when="FIRST_COMPLETED")
    unit.stopping()
    await server.stop()
    await unit.close()


def flags_of(args: argparse.Namespace) -> dict[str, object]:
    """The flags as configuration keys (None: not given)."""
    return {
        "listen": args.listen,
        "state_dir": args.state_dir,
        "enrol_listen": args.enrol_listen,
        "heartbeat_interval": args.heartbeat_interval,
        "deploy_timeout": args.deploy_timeout,
        "controller_id": args.controller_id,
        "metrics_listen": args.metrics_listen,
        "dashboard_listen": args.dashboard_listen,
        "insecure": args.insecure,
        "new_installation": args.new_installation,
        "log_level": args.log_level,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["config"]:  # config check FILE [flags]: effective values, their source
        return config_check.main(argv[1:], lambda rest: flags_of(parse_args(rest)))
    if argv[:1] == ["init"]:
        return pki_cli.init(argv[1:])
    if argv[:1] == ["issue-client"]:
        return pki_cli.issue_client(argv[1:])
    if argv[:1] == ["rotate-serving-cert"]:
        return pki_cli.rotate_serving_cert(argv[1:])
    args = parse_args(argv)
    try:
        config = load_config(args.config, flags_of(args))
        fmt = {"json": True, "console": False}.get(args.log_format or "")
        configure_logging(config.log_level, json=fmt)
        asyncio.run(serve(ControllerServer(config)))
    except NovaCronError as exc:  # StoreCorrupt, StoreMissing, ... name the file themselves
        print(f"novacron-controller: {exc}", file=sys.stderr)
        return 2
    except (OSError, sqlite3.Error) as exc:  # state dir unwritable, database locked or corrupt
        print(f"novacron-controller: cannot open state: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
