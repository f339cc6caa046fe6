"""WireGuard in userspace: `wireguard-go` started, supervised and configured over UAPI.

For hosts without the kernel module (this one, the lab). Everything runs in the caller's
network namespace, so an agent inside a lab site's netns gets its tunnel there.

The driver holds the desired state (key, port, peers) and treats the process as disposable:
if wireguard-go dies it is restarted and the whole state re-applied, in the order that makes the
first handshake immediate (device up and addressed before any peer, MACHINE-NOTES).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import structlog

from agent.backoff import Backoff
from agent.wireguard.base import (
    DeviceStatus,
    Endpoint,
    InterfaceConfig,
    IPNetwork,
    PeerChanges,
    PeerConfig,
    PresharedKey,
    PrivateKey,
    PublicKey,
)
from agent.wireguard.keys import (
    generate_private_key,
    load_or_create_private_key,
    public_key_of,
    write_private_key,
)
from agent.wireguard.uapi import SOCKET_DIR, DeviceUpdate, PeerUpdate, UapiClient, socket_path
from shared.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    NovaCronError,
    Unavailable,
)

log = structlog.get_logger(__name__)

IP_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
STABLE_AFTER_S = 10.0  # a process that lived this long resets the restart backoff
NO_PSK = PresharedKey(bytes(32))  # UAPI: an all-zero preshared key means "none"


class UserspaceWireGuard:
    """Implements agent.wireguard.base.WireGuardDriver with wireguard-go."""

    def __init__(
        self,
        config: InterfaceConfig,
        state_dir: Path,
        *,
        binary: str = "wireguard-go",
        socket_dir: Path = SOCKET_DIR,
        start_timeout_s: float = 5.0,
    ) -> None:
        self._config = config
        self._dir = state_dir / "wireguard"
        self._key_path = self._dir / f"{config.name}.key"
        self._log_path = self._dir / f"{config.name}.log"
        self._binary = binary
        self._sock = socket_path(config.name, socket_dir)
        self._uapi = UapiClient(self._sock)
        self._start_timeout_s = start_timeout_s
        self._lock = threading.RLock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0
        self._private: PrivateKey | None = None
        self._public: PublicKey | None = None
        self._port = config.listen_port
        self._peers: dict[PublicKey, PeerConfig] = {}
        self._is_up = False
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._restarts = 0
        self.log = log.bind(ifname=config.name)

    # --- identity ---------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._config.name

    @property
    def public_key(self) -> PublicKey:
        with self._lock:
            if self._public is None:
                self._load_key()
            assert self._public is not None
            return self._public

    @property
    def listen_port(self) -> int:
        return self._port

    @property
    def pid(self) -> int | None:
        """wireguard-go's pid (for supervision tests and diagnostics)."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def restarts(self) -> int:
        """How many times wireguard-go was restarted after dying."""
        return self._restarts

    # --- lifecycle --------------------------------------------------------------------------

    def up(self) -> None:
        with self._lock:
            if self._is_up and self.pid is not None:
                return
            self._stopping.clear()
            self._load_key()
            self._start_device()
            self._is_up = True
            if self._supervisor is None or not self._supervisor.is_alive():
                self._supervisor = threading.Thread(
                    target=self._supervise, name=f"wg-supervisor-{self.name}", daemon=True
                )
                self._supervisor.start()

    def down(self) -> None:
        self._stopping.set()
        with self._lock:
            self._is_up = False
            self._peers.clear()
            proc, self._proc = self._proc, None
            if proc is not None:
                self._stop_process(proc)
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None and supervisor is not threading.current_thread():
            supervisor.join(timeout=STOP_TIMEOUT_S)
        self.log.info("wireguard down")

    def close(self) -> None:
        self.down()

    # --- peers ------------------------------------------------------------------------------

    def add_peer(self, peer: PeerConfig) -> None:
        with self._lock:
            self._ensure_device()
            self._check_not_self(peer.public_key)
            if peer.public_key in self._peers:
                raise AlreadyExists(f"peer {peer.public_key} is already configured")
            self._uapi.set(DeviceUpdate(peers=(_full_update(peer),)))
            self._record(peer)
            self.log.info("peer added", peer=str(peer.public_key), endpoint=str(peer.endpoint))

    def update_peer(
        self,
        public_key: PublicKey,
        *,
        endpoint: Endpoint | None = None,
        allowed_ips: Sequence[IPNetwork] | None = None,
        persistent_keepalive_s: int | None = None,
    ) -> PeerConfig:
        with self._lock:
            self._ensure_device()
            current = self._peers.get(public_key)
            if current is None:
                raise NotFound(f"peer {public_key} is not configured")
            changed = dataclasses.replace(
                current,
                endpoint=current.endpoint if endpoint is None else endpoint,
                allowed_ips=current.allowed_ips if allowed_ips is None else tuple(allowed_ips),
                persistent_keepalive_s=(
                    current.persistent_keepalive_s
                    if persistent_keepalive_s is None
                    else persistent_keepalive_s
                ),
            )  # validates (InvalidArgument) before anything is sent
            update = PeerUpdate(
                public_key=public_key,
                update_only=True,
                endpoint=endpoint,
                persistent_keepalive_s=persistent_keepalive_s,
                replace_allowed_ips=allowed_ips is not None,
                allowed_ips=changed.allowed_ips if allowed_ips is not None else (),
            )
            self._uapi.set(DeviceUpdate(peers=(update,)))
            self._record(changed)
            self.log.info("peer updated", peer=str(public_key), endpoint=str(changed.endpoint))
            return changed

    def remove_peer(self, public_key: PublicKey) -> None:
        with self._lock:
            self._ensure_device()
            if public_key not in self._peers:
                raise NotFound(f"peer {public_key} is not configured")
            self._uapi.set(DeviceUpdate(peers=(PeerUpdate(public_key=public_key, remove=True),)))
            del self._peers[public_key]
            self.log.info("peer removed", peer=str(public_key))

    def set_peers(self, peers: Sequence[PeerConfig]) -> PeerChanges:
        with self._lock:
            self._ensure_device()
            desired: dict[PublicKey, PeerConfig] = {}
            for peer in peers:  # validate everything before touching the device
                self._check_not_self(peer.public_key)
                if peer.public_key in desired:
                    raise InvalidArgument(f"peer {peer.public_key} is listed twice")
                desired[peer.public_key] = peer
            removed = sorted(k for k in self._peers if k not in desired)
            updated = sorted(
                k for k in desired if k in self._peers and self._peers[k] != desired[k]
            )
            added = sorted(k for k in desired if k not in self._peers)
            for key in removed:
                self.remove_peer(key)
            for key in updated:
                self._uapi.set(DeviceUpdate(peers=(_full_update(desired[key], update_only=True),)))
                self._record(desired[key])
            for key in added:
                self.add_peer(desired[key])
            return PeerChanges(tuple(added), tuple(removed), tuple(updated))

    def peers(self) -> list[PeerConfig]:
        with self._lock:
            return [self._peers[k] for k in sorted(self._peers)]

    def status(self) -> DeviceStatus:
        with self._lock:
            self._ensure_device()
            return self._uapi.get()

    def rotate_private_key(self) -> PublicKey:
        with self._lock:
            self._ensure_device()
            new = generate_private_key()
            public = public_key_of(new)
            if public in self._peers:
                raise Internal("generated key pair collides with a peer's key")
            # The file is the source of truth: a restart after a failed set still uses the new key.
            write_private_key(self._key_path, new)
            self._private, self._public = new, public
            self._uapi.set(DeviceUpdate(private_key=new))
            self.log.info("private key rotated", public_key=str(public))
            return public

    # --- internals --------------------------------------------------------------------------

    def _load_key(self) -> None:
        self._private = load_or_create_private_key(self._key_path)
        self._public = public_key_of(self._private)

    def _check_not_self(self, key: PublicKey) -> None:
        if key == self.public_key:
            raise InvalidArgument(f"peer {key} is this node's own public key")

    def _record(self, peer: PeerConfig) -> None:
        """Mirror the device: an allowed IP given to one peer is taken from any other."""
        self._peers[peer.public_key] = peer
        claimed = set(peer.allowed_ips)
        for key, other in list(self._peers.items()):
            if key != peer.public_key and claimed & set(other.allowed_ips):
                kept = tuple(n for n in other.allowed_ips if n not in claimed)
                self._peers[key] = dataclasses.replace(other, allowed_ips=kept)
                self.log.info("allowed ips moved", to=str(peer.public_key), from_=str(key))

    def _ensure_device(self) -> None:
        """Lock held. The device must be up; if wireguard-go just died, restart it here rather
        than fail the caller while the supervisor catches up."""
        if not self._is_up:
            raise FailedPrecondition(f"wireguard interface {self.name} is not up")
        if self.pid is None:
            self._restart("found dead on use")

    def _restart(self, why: str) -> None:
        proc = self._proc
        self.log.warning(
            "wireguard-go exited; restarting",
            why=why,
            returncode=None if proc is None else proc.returncode,
        )
        self._proc = None
        self._start_device()
        self._restarts += 1

    def _supervise(self) -> None:
        backoff = Backoff(base=0.2, cap=5.0)
        while not self._stopping.is_set():
            proc = self._proc
            if proc is not None:
                proc.wait()
            with self._lock:
                if self._stopping.is_set():
                    return
                if self.pid is not None:  # already restarted by a caller
                    continue
                if time.monotonic() - self._started_at > STABLE_AFTER_S:
                    backoff.reset()
                try:
                    self._restart("process exited")
                    continue
                except NovaCronError as exc:
                    self.log.error("wireguard-go restart failed", error=str(exc))
            self._stopping.wait(backoff.next_delay())

    def _start_device(self) -> None:
        """Lock held. Start wireguard-go and apply the full state; on failure leave nothing."""
        assert self._private is not None
        self._evict_orphan()
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        env = {**os.environ, "LOG_LEVEL": "error"}
        with open(self._log_path, "ab") as out:
            try:
                proc = subprocess.Popen(
                    [self._binary, "-f", self.name],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    env=env,
                    start_new_session=True,  # the agent's Ctrl-C must not kill the tunnel first
                )
            except OSError as exc:
                raise FailedPrecondition(f"cannot start {self._binary}: {exc}") from None
        self._proc = proc
        self._started_at = time.monotonic()
        started = time.monotonic()
        try:
            self._wait_for_socket(proc)
            self._uapi.set(DeviceUpdate(private_key=self._private, listen_port=self._port))
            if self._port == 0:
                self._port = self._uapi.get().listen_port  # keep it: peers are told this port
            self._link_up()
            if self._peers:
                updates = tuple(_full_update(p) for p in self._peers.values())
                self._uapi.set(DeviceUpdate(peers=updates))
        except BaseException:
            self._proc = None
            self._stop_process(proc)
            raise
        self.log.info(
            "wireguard up",
            pid=proc.pid,
            listen_port=self._port,
            peers=len(self._peers),
            took_ms=round((time.monotonic() - started) * 1000, 1),
        )

    def _wait_for_socket(self, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self._start_timeout_s
        while not self._uapi.alive():
            if proc.poll() is not None:
                raise Unavailable(
                    f"wireguard-go {self.name} exited with {proc.returncode}: {self._log_tail()}"
                )
            if time.monotonic() > deadline:
                raise DeadlineExceeded(
                    f"wireguard-go {self.name}: no UAPI socket after {self._start_timeout_s}s"
                )
            time.sleep(0.01)

    def _link_up(self) -> None:
        _ip("link", "set", "dev", self.name, "mtu", str(self._config.mtu), "up")
        for addr in self._config.addresses:
            _ip("address", "replace", str(addr), "dev", self.name)

    def _stop_process(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.log.warning("wireguard-go ignored SIGTERM; killing", pid=proc.pid)
                proc.kill()
                proc.wait()
        with contextlib.suppress(FileNotFoundError):
            self._sock.unlink()

    def _evict_orphan(self) -> None:
        """A socket left by a wireguard-go of ours that outlived a crashed agent: stop it (same
        name = same node, since names are derived from the node id). One in another network
        namespace is someone else's: refuse."""
        if not self._sock.exists():
            return
        pid = _socket_peer_pid(self._sock)
        if pid is None:  # stale file, nobody listening
            with contextlib.suppress(FileNotFoundError):
                self._sock.unlink()
            return
        if not _same_netns(pid) or _comm(pid) != "wireguard-go":
            raise FailedPrecondition(
                f"interface name {self.name} is in use by pid {pid} ({_comm(pid)}) "
                "in another network namespace"
            )
        self.log.warning("stopping orphaned wireguard-go", pid=pid)
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while Path(f"/proc/{pid}").exists() and _comm(pid) == "wireguard-go":
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                break
            time.sleep(0.02)
        with contextlib.suppress(FileNotFoundError):
            self._sock.unlink()

    def _log_tail(self, limit: int = 800) -> str:
        try:
            with open(self._log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - limit))
                return f.read().decode(errors="replace").strip()
        except OSError:
            return ""


def _full_update(peer: PeerConfig, update_only: bool = False) -> PeerUpdate:
    """Every field of `peer`, replacing what the device has for it."""
    return PeerUpdate(
        public_key=peer.public_key,
        update_only=update_only,
        preshared_key=peer.preshared_key or NO_PSK,
        endpoint=peer.endpoint,
        persistent_keepalive_s=peer.persistent_keepalive_s,
        replace_allowed_ips=True,
        allowed_ips=peer.allowed_ips,
    )


def _ip(*args: str) -> None:
    try:
        proc = subprocess.run(
            ["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Internal(f"ip {' '.join(args)}: {exc}") from None
    if proc.returncode != 0:
        raise Internal(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")


def _socket_peer_pid(path: Path) -> int | None:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            sock.connect(str(path))
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    pid: int = struct.unpack("3i", creds)[0]
    return pid


def _same_netns(pid: int) -> bool:
    try:
        theirs = os.stat(f"/proc/{pid}/ns/net")
        ours = os.stat("/proc/self/ns/net")
    except OSError:
        return False
    return (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino)


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"
