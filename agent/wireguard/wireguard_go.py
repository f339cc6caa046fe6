"""The wireguard-go process behind agent.wireguard.userspace: started, supervised, restarted
with the whole desired state re-applied, and stopped; an orphan of a crashed agent is evicted.

Everything runs in the caller's network namespace, so an agent inside a lab site's netns gets its
tunnel there. The state is re-applied in the order that makes the first handshake immediate
(device up and addressed before any peer, MACHINE-NOTES).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import structlog

from agent.backoff import Backoff
from agent.wireguard.base import (
    InterfaceConfig,
    PeerConfig,
    PresharedKey,
    PrivateKey,
    PublicKey,
)
from agent.wireguard.keys import load_or_create_private_key, public_key_of
from agent.wireguard.uapi import SOCKET_DIR, DeviceUpdate, PeerUpdate, UapiClient, socket_path
from shared.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    NovaCronError,
    Unavailable,
)

log = structlog.get_logger(__name__)

IP_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
STABLE_AFTER_S = 10.0  # a process that lived this long resets the restart backoff
NO_PSK = PresharedKey(bytes(32))  # UAPI: an all-zero preshared key means "none"


class WireGuardGoProcess:
    """wireguard-go for one interface, and the desired state it is (re)configured with."""

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

    # --- internals --------------------------------------------------------------------------

    def _load_key(self) -> None:
        self._private = load_or_create_private_key(self._key_path)
        self._public = public_key_of(self._private)

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
