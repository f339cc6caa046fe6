"""A libvirtd of our own, isolated from the host's, for the lab and the tests.

The daemon runs in a private mount namespace where /etc/libvirt, /run/libvirt, /var/lib/libvirt,
/var/log/libvirt and /var/cache/libvirt are bind mounts of per-instance directories, so several
daemons (one per emulated edge node) can run side by side. Its socket is reachable from the root
namespace at <base_dir>/run/libvirt/libvirt-sock because the bind source is a plain directory.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import libvirt
import structlog

from agent.hypervisor.libvirt_driver import ensure_event_loop

log = structlog.get_logger(__name__)

HOST_QEMU_CACHE = Path("/var/cache/libvirt/qemu")
_MOUNTS = ("etc", "run", "lib", "log", "cache")
_TARGETS = {
    "etc": "/etc/libvirt",
    "run": "/run/libvirt",
    "lib": "/var/lib/libvirt",
    "log": "/var/log/libvirt",
    "cache": "/var/cache/libvirt",
}
_MAX_SOCKET_PATH = 107  # sun_path limit


class LibvirtdError(RuntimeError):
    """The private libvirtd could not be started or stopped; the message says why."""


class PrivateLibvirtd:
    """One private libvirtd.

    netns: a path like /run/netns/NODE to run the daemon in (entered with nsenter --net, which
    unlike `ip netns exec` keeps /sys and the cgroup mounts); listen: also serve TCP (set
    listen_addr etc. through extra_libvirtd_conf); extra_*_conf: raw `key = value` settings
    (values already in libvirt syntax, e.g. '"10.0.0.2"'), e.g. for migration addresses.
    No virtlogd is started: qemu.conf uses stdio_handler = "file", so none is needed.
    extra_binds: {host directory: path in the daemon's namespace}, for an agent whose files
    (kernels, disks, console logs) live at paths the host does not have, e.g. in a container.
    """

    def __init__(
        self,
        base_dir: Path,
        *,
        netns: str | None = None,
        listen: bool = False,
        extra_libvirtd_conf: Mapping[str, str] | None = None,
        extra_qemu_conf: Mapping[str, str] | None = None,
        start_timeout_s: float = 30.0,
        warm_host_cache: bool = True,
        extra_binds: Mapping[Path, str] | None = None,
    ) -> None:
        self.base_dir = Path(base_dir).absolute()
        self.netns = netns
        self.listen = listen
        self.extra_libvirtd_conf = dict(extra_libvirtd_conf or {})
        self.extra_qemu_conf = dict(extra_qemu_conf or {})
        self.start_timeout_s = start_timeout_s
        self.warm_host_cache = warm_host_cache
        self.extra_binds = dict(extra_binds or {})
        self.host_uuid = str(uuid.uuid4())
        self._pid: int | None = None
        if len(str(self.socket_path)) > _MAX_SOCKET_PATH:
            raise LibvirtdError(f"socket path {self.socket_path} is too long for a unix socket")

    # -- paths -----------------------------------------------------------------------------

    def dir(self, key: str) -> Path:
        """Host-side directory bind-mounted over the libvirt directory `key` (etc, run, ...)."""
        return self.base_dir / key / "libvirt"

    @property
    def socket_path(self) -> Path:
        return self.dir("run") / "libvirt-sock"

    @property
    def pid_file(self) -> Path:
        return self.dir("run") / "libvirtd.pid"

    @property
    def log_file(self) -> Path:
        return self.dir("log") / "libvirtd.log"

    @property
    def uri(self) -> str:
        return f"qemu+unix:///system?socket={self.socket_path}"

    @property
    def pid(self) -> int | None:
        return self._pid

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the daemon and wait until its socket answers, or raise with its log tail."""
        if self._pid is not None and _alive(self._pid):
            return
        for tool in ("unshare", "libvirtd", "mount"):
            if shutil.which(tool) is None:
                raise LibvirtdError(f"{tool} not found (Debian: libvirt-daemon-system, util-linux)")
        self._prepare_dirs()
        binds = "; ".join(
            f"mount --bind {shlex.quote(str(self.dir(k)))} {_TARGETS[k]}" for k in _MOUNTS
        )
        binds += "".join(
            f"; mount --bind {shlex.quote(str(src))} {shlex.quote(dst)}"
            for src, dst in self.extra_binds.items()
        )
        targets = " ".join(shlex.quote(t) for t in [*_TARGETS.values(), *self.extra_binds.values()])
        daemon = f"exec libvirtd --daemon --pid-file {shlex.quote(str(self.pid_file))}"
        if self.listen:
            daemon += " --listen"
        script = f"set -e; mkdir -p {targets}; {binds}; {daemon}"
        cmd = ["unshare", "-m", "--propagation", "private", "--"]
        if self.netns:
            cmd += ["nsenter", f"--net={self.netns}", "--"]
        cmd += ["sh", "-c", script]
        t0 = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
        if proc.returncode != 0:
            raise LibvirtdError(
                f"libvirtd failed to start (exit {proc.returncode}): {proc.stderr.strip()}"
                f"{self._log_tail()}"
            )
        deadline = t0 + self.start_timeout_s
        while True:
            if self._pid is None and self.pid_file.exists():
                with contextlib.suppress(ValueError):
                    self._pid = int(self.pid_file.read_text().strip())
            if self._pid is not None and self._answers():
                break
            if self._pid is not None and not _alive(self._pid):
                raise LibvirtdError(f"libvirtd (pid {self._pid}) exited{self._log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise LibvirtdError(
                    f"libvirtd socket {self.socket_path} did not answer within "
                    f"{self.start_timeout_s}s{self._log_tail()}"
                )
            time.sleep(0.05)
        log.info("libvirtd_started", pid=self._pid, uri=self.uri, s=round(time.monotonic() - t0, 2))

    def stop(self) -> None:
        """Remove every domain (libvirtd leaves guests running), then SIGTERM our daemon."""
        pid = self._pid
        if pid is None and self.pid_file.exists():
            with contextlib.suppress(ValueError):
                pid = int(self.pid_file.read_text().strip())
        if pid is None or not _is_our_libvirtd(pid, self.pid_file):
            self._pid = None
            return
        if self.socket_path.exists():
            self._remove_all_domains()
        self._warm_host_cache()
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            log.warning("libvirtd_sigkill", pid=pid)
            os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.05)
        self._pid = None
        log.info("libvirtd_stopped", pid=pid)

    def __enter__(self) -> PrivateLibvirtd:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals -------------------------------------------------------------------------

    def _prepare_dirs(self) -> None:
        for key in _MOUNTS:
            self.dir(key).mkdir(parents=True, exist_ok=True)
        for stale in (self.pid_file, self.socket_path):
            stale.unlink(missing_ok=True)
        etc = self.dir("etc")
        libvirtd_conf = {
            "auth_unix_rw": '"none"',
            "auth_unix_ro": '"none"',
            "unix_sock_rw_perms": '"0770"',
            "listen_tls": "0",
            "listen_tcp": "1" if self.listen else "0",
            "auth_tcp": '"none"',
            "host_uuid": f'"{self.host_uuid}"',  # distinct per daemon, or migration refuses
            "log_outputs": '"3:file:/var/log/libvirt/libvirtd.log"',
        }
        qemu_conf = {
            "user": '"root"',
            "group": '"root"',
            "security_driver": '"none"',
            "cgroup_controllers": "[ ]",
            "stdio_handler": '"file"',  # no virtlogd needed
        }
        (etc / "libvirtd.conf").write_text(_conf(libvirtd_conf | self.extra_libvirtd_conf))
        (etc / "qemu.conf").write_text(_conf(qemu_conf | self.extra_qemu_conf))
        cache = self.dir("cache") / "qemu"
        if HOST_QEMU_CACHE.is_dir() and not cache.exists():
            shutil.copytree(HOST_QEMU_CACHE, cache, symlinks=True)

    def _answers(self) -> bool:
        if not self.socket_path.exists():
            return False
        try:
            conn = libvirt.open(self.uri)
        except libvirt.libvirtError:
            return False
        try:
            conn.getVersion()
            return True
        except libvirt.libvirtError:
            return False
        finally:
            conn.close()

    def _remove_all_domains(self) -> None:
        ensure_event_loop()  # installs the quiet error handler too
        try:
            conn: Any = libvirt.open(self.uri)
        except libvirt.libvirtError as err:
            log.warning("libvirtd_unreachable_at_stop", error=str(err))
            return
        try:
            for dom in conn.listAllDomains(0):
                name = dom.name()
                try:
                    if dom.isActive():
                        dom.destroy()
                    if dom.isPersistent():
                        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
                except libvirt.libvirtError as err:
                    log.warning("libvirtd_domain_cleanup_failed", domain=name, error=str(err))
        finally:
            conn.close()

    def _warm_host_cache(self) -> None:
        """Give later daemons a seeded capability cache (a cold probe costs ~8 s)."""
        ours = self.dir("cache") / "qemu" / "capabilities"
        host = HOST_QEMU_CACHE / "capabilities"
        if not self.warm_host_cache or not ours.is_dir() or not any(ours.iterdir()):
            return
        if host.is_dir() and any(host.iterdir()):
            return
        try:
            shutil.copytree(ours, host, dirs_exist_ok=True)
            log.info("libvirt_host_cache_warmed", path=str(host))
        except OSError as err:
            log.warning("libvirt_host_cache_warm_failed", error=str(err))

    def _log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_file.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\nlibvirtd log tail:\n" + "\n".join(text) if text else ""


def _conf(settings: Mapping[str, str]) -> str:
    return "".join(f"{key} = {value}\n" for key, value in settings.items())


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return False


def _is_our_libvirtd(pid: int, pid_file: Path) -> bool:
    """Guard against killing a recycled pid: it must be a libvirtd using our pid file."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return (
        bool(cmdline)
        and cmdline[0].endswith(b"libvirtd")
        and (str(pid_file).encode() in cmdline or b"--pid-file" in cmdline)
    )
