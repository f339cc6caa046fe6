"""novacron-agent: the node daemon's command line.

`novacron-agent config check FILE [flags]` prints the effective configuration, each key with its
source (default, file, env, flag); exit 2 with the errors if FILE is refused.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import structlog

from agent import __version__, config_check
from agent.backoff import Backoff
from agent.config import AgentConfig, load_config
from agent.credentials import NodeCredentials
from agent.credentials import load as load_credentials
from agent.enrolment import enrol
from agent.hypervisor.libvirt_driver import LibvirtHypervisor
from agent.images.catalog import ImageCatalog
from agent.mesh import MeshManager
from agent.metrics import serve_metrics
from agent.qos import UplinkClasses, route_device
from agent.session import AgentSession
from agent.unit import AgentUnit
from agent.vmnet import VMNetwork
from agent.wireguard import InterfaceConfig, UserspaceWireGuard, interface_name
from shared.errors import ConfigError, InvalidArgument, NovaCronError, Unavailable
from shared.logging import configure_logging, dump_stacks_on_sigusr1

log = structlog.get_logger(__name__)

QOS_RETRY_S = 5.0


def _labels(values: list[str] | None) -> dict[str, str] | None:
    if not values:
        return None
    labels = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--label {item!r}: expected KEY=VALUE")
        labels[key] = value
    return labels


def _location(value: str | None, country: str | None) -> dict[str, object] | None:
    if value is None:
        if country:
            raise ConfigError("--country needs --location LAT,LON as well")
        return None
    lat, sep, lon = value.partition(",")
    try:
        loc: dict[str, object] = {"latitude": float(lat), "longitude": float(lon)}
    except ValueError:
        raise ConfigError(f"--location {value!r}: expected LAT,LON e.g. 52.52,13.40") from None
    if not sep:
        raise ConfigError(f"--location {value!r}: expected LAT,LON e.g. 52.52,13.40")
    if country:
        loc["country"] = country
    return loc


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="novacron-agent",
        description="NovaCron Edge agent: reports this node to the controller and runs its VMs "
        "through libvirt. Settings come from --config (the `agent:` block), then "
        "NOVACRON_AGENT_<KEY> environment variables, then these flags.",
    )
    p.add_argument("--config", type=Path, help="YAML file with an `agent:` block")
    p.add_argument("--node-id", help="this node's id (default: hostname)")
    p.add_argument("--controller", help="controller HOST:PORT (default 127.0.0.1:7700)")
    p.add_argument("--libvirt-uri", help="libvirt URI (default qemu:///system)")
    p.add_argument("--virt-type", choices=["auto", "qemu", "kvm"], help="default auto")
    p.add_argument("--edge-type", help="mec, cdn, iot, onprem, telco or cloud")
    p.add_argument("--label", action="append", metavar="KEY=VALUE", help="repeatable")
    p.add_argument("--location", metavar="LAT,LON", help="geo location, e.g. 52.52,13.40")
    p.add_argument("--country", help="ISO 3166-1 alpha-2 country code, e.g. DE")
    p.add_argument("--cost-per-hour", type=float, help="price of this node, for placement")
    p.add_argument("--state-dir", help="default /var/lib/novacron/agent")
    p.add_argument("--images-dir", help="default /var/lib/novacron/images")
    p.add_argument("--heartbeat-interval", help="e.g. 5s (the controller may override)")
    p.add_argument("--probe-interval", help="latency probes, e.g. 1s (the controller may override)")
    p.add_argument(
        "--join-token",
        help="ID.SECRET from `novacron token create`: enrol once (prefer the config file or "
        "NOVACRON_AGENT_JOIN_TOKEN: flags are visible in ps)",
    )
    p.add_argument(
        "--ca-pin", help="sha256:HEX, the installation CA's pin (printed with the token)"
    )
    p.add_argument(
        "--enrol-address", help="the controller's join HOST:PORT (default: its port + 1)"
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="talk to the controller without TLS (local development only)",
    )
    p.add_argument("--metrics-listen", help='Prometheus HOST:PORT (default 127.0.0.1:9471, "" off)')
    p.add_argument("--log-level", help="debug, info, warning, error")
    p.add_argument("--log-format", choices=["json", "console"], help="default: console on a TTY")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p.parse_args(argv)


async def open_hypervisor(config: AgentConfig) -> LibvirtHypervisor:
    """libvirtd may start after us (boot order): wait for it rather than die."""
    backoff = Backoff(cap=config.reconnect_max)
    while True:
        try:
            return await asyncio.to_thread(
                LibvirtHypervisor,
                config.libvirt_uri,
                config.virt_type,
                str(config.images_dir),
            )
        except Unavailable as exc:
            delay = backoff.next_delay()
            log.warning("libvirt unavailable", error=str(exc), retry_in_s=round(delay, 2))
            await asyncio.sleep(delay)


async def start_mesh(config: AgentConfig) -> MeshManager:
    """wireguard-go up (keys made on this node), before the first hello announces it."""
    driver = UserspaceWireGuard(
        InterfaceConfig(
            name=interface_name(config.node_id),
            addresses=(),
            listen_port=config.mesh.listen_port,
        ),
        config.state_dir,
    )
    await asyncio.to_thread(driver.up)
    return MeshManager(driver, config.mesh.endpoint_host, config.mesh.behind_nat, vmnet=VMNetwork())


def apply_qos(config: AgentConfig) -> None:
    """Blocking (`ip`, `tc`). Bad classes refuse the start: running without them would let a
    migration starve the control plane. An uplink not found yet (no route to the controller,
    no DNS: a gateway booting offline) is Unavailable: the agent starts, and retries."""
    UplinkClasses("uplink", config.qos.link_mbit, config.qos.migration_mbit)  # valid at all?
    ifname = config.qos.uplink
    if not ifname:
        host = config.controller.rpartition(":")[0].strip("[]")
        try:
            address = socket.gethostbyname(host)
        except OSError as exc:
            raise Unavailable(f"agent.qos: cannot resolve the controller {host!r}: {exc}") from None
        try:
            ifname = route_device(address)
        except InvalidArgument as exc:
            raise Unavailable(f"agent.qos: {exc}") from None
    UplinkClasses(ifname, config.qos.link_mbit, config.qos.migration_mbit).apply()


async def keep_applying_qos(config: AgentConfig) -> None:
    """Until the uplink is found (the link comes back): offline, the agent runs without."""
    while True:
        try:
            await asyncio.to_thread(apply_qos, config)
            return
        except Unavailable as exc:
            log.warning("uplink qos not applied yet", error=str(exc), retry_s=QOS_RETRY_S)
        await asyncio.sleep(QOS_RETRY_S)


async def node_credentials(config: AgentConfig) -> NodeCredentials | None:
    """The stored ones; else enrol with the join token; None only with --insecure."""
    if config.insecure:
        log.warning(
            "INSECURE MODE: the controller connection is neither encrypted nor authenticated"
        )
        return None
    stored = await asyncio.to_thread(load_credentials, config.state_dir)
    if stored is not None and stored.not_after() > dt.datetime.now(dt.UTC):
        return stored
    if stored is not None:  # offline for longer than its lifetime: it cannot reconnect
        return await enrol_again(config, stored)
    if not config.join_token or not config.ca_pin:
        raise ConfigError(
            f"this node is not enrolled (no certificate in {config.state_dir}/pki): start it "
            "once with --join-token ID.SECRET --ca-pin sha256:HEX (from `novacron token "
            "create`), or with --insecure for local development"
        )
    enrolled = await enrol(
        config.state_dir,
        config.node_id,
        config.controller,
        config.enrol_address,
        config.join_token,
        config.ca_pin,
    )
    log.info("enrolled", node_id=config.node_id, not_after=enrolled.not_after().isoformat())
    return enrolled


async def enrol_again(config: AgentConfig, expired: NodeCredentials) -> NodeCredentials:
    """With the configured token if it still works (one made with --node-id); else the agent
    runs on without the controller (its VMs, self-fencing and offline restore go on) and
    says what to do."""
    why = f"this node's certificate expired at {expired.not_after().isoformat()}"
    if config.join_token and config.ca_pin:
        try:
            return await enrol(
                config.state_dir,
                config.node_id,
                config.controller,
                config.enrol_address,
                config.join_token,
                config.ca_pin,
            )
        except NovaCronError as exc:
            why += f"; enrolling again with the configured token failed: {exc}"
    log.error(
        "cannot reconnect to the controller",
        why=why,
        fix=f"novacron token create --node-id {config.node_id}, then start the agent "
        "with --join-token (the VMs run on meanwhile)",
    )
    return expired


async def run(config: AgentConfig) -> None:
    unit = AgentUnit(config)  # systemd: READY=1, STATUS=, WATCHDOG=1 (agent/unit.py)
    # before libvirt: while it is away, a scrape says so (novacron_agent_libvirt_up 0)
    metrics = serve_metrics(config.node_id, config.metrics_listen)
    config.state_dir.mkdir(parents=True, exist_ok=True)
    credentials = await node_credentials(config)
    qos: asyncio.Task[None] | None = None
    if config.qos.enabled:
        try:
            await asyncio.to_thread(apply_qos, config)
        except Unavailable as exc:
            log.warning("uplink qos not applied: starting without, retrying", error=str(exc))
            qos = asyncio.create_task(keep_applying_qos(config))
    hypervisor = await open_hypervisor(config)
    host = await asyncio.to_thread(hypervisor.host_info)
    config.capacity.check_against(host.capacity.vcpus, host.capacity.memory_mib)
    mesh = await start_mesh(config) if config.mesh.enabled else None
    catalog = ImageCatalog(config.images_dir)
    session = AgentSession(config, hypervisor, catalog, mesh=mesh, credentials=credentials)
    unit.watch(session)
    if metrics is not None:
        metrics.attach(hypervisor, mesh, session.latencies)
    loop = asyncio.get_running_loop()
    main_task = asyncio.create_task(session.run_forever())
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, main_task.cancel)
    dump_stacks_on_sigusr1(loop)
    try:
        await main_task
    except asyncio.CancelledError:
        log.info("agent stopping")
    finally:
        unit.stopping()
        if qos is not None:
            qos.cancel()
        await session.close()
        await asyncio.to_thread(hypervisor.close)
        if mesh is not None:
            await asyncio.to_thread(mesh.driver.close)
        if metrics is not None:
            await asyncio.to_thread(metrics.stop)
        await unit.close()


def flags_of(args: argparse.Namespace) -> dict[str, Any]:
    """The flags as configuration keys (None: not given)."""
    return {
        "node_id": args.node_id,
        "controller": args.controller,
        "libvirt_uri": args.libvirt_uri,
        "virt_type": args.virt_type,
        "edge_type": args.edge_type,
        "labels": _labels(args.label),
        "location": _location(args.location, args.country),
        "cost_per_hour": args.cost_per_hour,
        "state_dir": args.state_dir,
        "images_dir": args.images_dir,
        "heartbeat_interval": args.heartbeat_interval,
        "probe_interval": args.probe_interval,
        "insecure": args.insecure,
        "join_token": args.join_token,
        "ca_pin": args.ca_pin,
        "enrol_address": args.enrol_address,
        "log_level": args.log_level,
        "metrics_listen": args.metrics_listen,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["config"]:  # config check FILE [flags]: effective values, their source
        return config_check.main(argv[1:], lambda rest: flags_of(parse_args(rest)))
    args = parse_args(argv)
    try:
        config = load_config(args.config, flags_of(args))
        fmt = {"json": True, "console": False}.get(args.log_format or "")
        configure_logging(config.log_level, json=fmt)
        asyncio.run(run(config))
    except NovaCronError as exc:
        print(f"novacron-agent: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
