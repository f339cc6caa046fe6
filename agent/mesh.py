"""The agent's end of the edge mesh: applies the controller's versioned peer sets to the
WireGuard driver (only the difference, one peer at a time) and reports what is applied."""

from __future__ import annotations

import ipaddress
import subprocess
import threading
import time

import structlog

from agent.overlay_guard import guard
from agent.vmnet import VMNetwork
from agent.wireguard.base import PeerConfig, WireGuardDriver
from shared.errors import InvalidArgument, NovaCronError
from shared.mesh import MeshConfig, MeshIdentity, MeshPeer, MeshPeerStatus, MeshStatus

log = structlog.get_logger(__name__)


class MeshManager:
    """Blocking (driver, `ip`): the session calls it off the event loop."""

    def __init__(
        self,
        driver: WireGuardDriver,
        endpoint_host: str,
        behind_nat: bool,
        vmnet: VMNetwork | None = None,
    ) -> None:
        self.driver = driver
        self.vmnet = vmnet
        self.endpoint_host = endpoint_host
        self.behind_nat = behind_nat
        self._lock = threading.Lock()
        self._version = 0
        self._address = ""
        self._peers: tuple[MeshPeer, ...] = ()
        self._error = ""

    def identity(self) -> MeshIdentity:
        endpoint = (
            ""
            if self.behind_nat or not self.endpoint_host
            else (f"{self.endpoint_host}:{self.driver.listen_port}")
        )
        return MeshIdentity(self.driver.public_key.to_base64(), endpoint, self.behind_nat)

    @property
    def peers(self) -> tuple[MeshPeer, ...]:
        """The applied peers (for latency probes over the tunnel)."""
        return self._peers

    def apply(self, config: MeshConfig) -> MeshStatus:
        """Converge on `config`; an older version than the applied one is ignored."""
        with self._lock:
            if config.version < self._version:
                return self._status_locked()
            try:
                wanted = [
                    PeerConfig.parse(
                        p.public_key, p.allowed_ips, p.endpoint, p.persistent_keepalive_s
                    )
                    for p in config.peers
                ]
                self._set_address(config.address)
                changes = self.driver.set_peers(wanted)
                if self.vmnet is not None and config.vm_pool:
                    self.vmnet.configure(config.vm_pool, config.vm_gateway, self.driver.name)
            except NovaCronError as exc:
                self._error = f"version {config.version}: {exc}"
                log.warning("mesh config not applied", version=config.version, error=str(exc))
                raise
            self._version, self._peers, self._error = config.version, config.peers, ""
            log.info(
                "mesh applied",
                version=config.version,
                added=len(changes.added),
                removed=len(changes.removed),
                updated=len(changes.updated),
            )
            return self._status_locked()

    def rotate(self) -> MeshStatus:
        with self._lock:
            self.driver.rotate_private_key()
            return self._status_locked()

    def status(self) -> MeshStatus:
        with self._lock:
            if self._address:  # a restarted wireguard-go comes back without our address
                self._set_address(self._address)
            return self._status_locked()

    def peek(self) -> MeshStatus:
        """The status without repairing anything (a metrics scrape must change nothing)."""
        with self._lock:
            return self._status_locked()

    def _status_locked(self) -> MeshStatus:
        device = self.driver.status()
        by_key = {p.public_key: p for p in self._peers}
        now = time.time()
        peers = []
        for status in device.peers:
            key = status.public_key.to_base64()
            wanted = by_key.get(key)
            age = status.handshake_age_s(now)
            peers.append(
                MeshPeerStatus(
                    node_id=wanted.node_id if wanted else "",
                    public_key=key,
                    endpoint=str(status.endpoint) if status.endpoint else "",
                    last_handshake_age_s=-1.0 if age is None else age,
                    rx_bytes=status.rx_bytes,
                    tx_bytes=status.tx_bytes,
                )
            )
        return MeshStatus(
            applied_version=self._version,
            public_key=self.driver.public_key.to_base64(),
            address=self._address,
            peers=tuple(sorted(peers, key=lambda p: p.node_id)),
            error=self._error,
        )

    def _set_address(self, cidr: str) -> None:
        try:
            ipaddress.ip_interface(cidr)
        except ValueError as exc:
            raise InvalidArgument(f"mesh address {cidr!r}: {exc}") from None
        previous = self._address
        if cidr != previous and previous:
            _ip("addr", "del", previous, "dev", self.driver.name, check=False)
        _ip("addr", "replace", cidr, "dev", self.driver.name)
        if cidr != previous:  # only the tunnel delivers to it (agent/overlay_guard.py)
            guard(cidr.split("/")[0], self.driver.name, previous.split("/")[0])
        self._address = cidr

    @property
    def address_ip(self) -> str:
        """This node's mesh address, without prefix ("" before the controller gave one)."""
        return self._address.split("/")[0]


def _ip(*args: str, check: bool = True) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise InvalidArgument(f"ip {' '.join(args)}: {done.stderr.strip()}")
