"""The packaged units under a real systemd: the amd64 packages installed into a fresh Debian root
that is then booted with systemd as its PID 1 (systemd-nspawn), and the daemons run by it as an
operator runs them: enabled but skipped at boot until configured, `novacron-controller init`,
`systemctl start` returning once the daemon said READY=1, the controller as the `novacron` user,
the watchdog restarting a controller whose store went read-only, the agent enrolling with a join
token over mTLS and stopping cleanly on `systemctl stop`. Everything is judged by systemd's own
books (`systemctl show`, the journal), not by what the daemons say of themselves.

The agent reaches a libvirtd of the host's through /run/libvirt, bind-mounted into the container
(tests/integration's notify tests cover the protocol; this covers the units and their sandbox).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.images.builder import build_tiny_image
from lab.libvirtd import PrivateLibvirtd
from tests.conftest import qemu_backend_problem, require_backend
from tests.system.booted import Booted, boot_problem, booted
from tests.system.debroot import build_root, fresh_root, in_root, run
from tests.system.test_packages import PACKAGES, build, deb, root_problem
from tests.unit.test_systemd_units import EXPOSURE

pytestmark = pytest.mark.deb

UNITS = ("novacron-controller.service", "novacron-agent.service")
CONTROLLER, AGENT = UNITS
STATE = "/var/lib/novacron/controller"
WATCHDOG_S = 4  # the test's drop-in: the shipped 30 s, shortened to keep the test quick
NODE = "sd-node"
SHARED = Path("/var/lib/novacron")
AT_BOOT: dict[str, object] = {}  # the units as systemd left them at boot (`node`)
HOST: dict[str, str] = {}  # the host side of `node`: its libvirtd


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Booted]:
    """A fresh root with the three amd64 packages and a tiny guest image, booted; what systemd
    made of the units at boot is kept in `at_boot` before anything else touches them.

    The host's libvirtd (one of our own) sees the root's /var/lib/novacron at /var/lib/novacron,
    so the paths the agent puts in a domain (kernel, overlay, console log) are its paths too."""
    for problem in (root_problem(), boot_problem(), qemu_backend_problem()):
        require_backend(not problem, problem)
    out = tmp_path_factory.mktemp("debs")
    build(out, "--arch", "amd64")
    console = tmp_path_factory.mktemp("boot") / "console.log"
    made_mountpoint = not SHARED.exists()  # the bind's mountpoint, on the host, if it must be
    with fresh_root(build_root()) as root:
        (root / "tmp/debs").mkdir()
        for name in PACKAGES:
            shutil.copy(deb(out, name, "amd64"), root / "tmp/debs")
        policy = root / "usr/sbin/policy-rc.d"  # nothing starts in the chroot
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        in_root(root, "apt-get install -y -q --no-install-recommends /tmp/debs/*.deb")
        policy.unlink()
        build_tiny_image(root / "var/lib/novacron/images", "tiny")
        base = Path(tempfile.mkdtemp(prefix="nc-sdl-", dir="/tmp"))
        libvirtd = PrivateLibvirtd(base, extra_binds={root / "var/lib/novacron": str(SHARED)})
        try:
            libvirtd.start()
            HOST["libvirt_uri"] = libvirtd.uri
            binds = [(libvirtd.socket_path.parent, "/run/libvirt")]
            with booted(root, console, binds) as box:
                AT_BOOT.update({u: box.show(u, "ActiveState", "Result") for u in UNITS})
                AT_BOOT.update({f"{u} journal": box.journal(u) for u in UNITS})
                yield box
        finally:
            libvirtd.stop()
            shutil.rmtree(base, ignore_errors=True)
            if made_mountpoint:
                with contextlib.suppress(OSError):
                    SHARED.rmdir()


def wait_until(box: Booted, what: str, check: str, timeout_s: float = 60) -> None:
    """Until the sh `check` succeeds in the container (another init system's progress: polled)."""
    deadline = time.monotonic() + timeout_s
    while box.sh(check, check=False).split("\n", 1)[0] != "0":
        assert time.monotonic() < deadline, f"not within {timeout_s:.0f} s: {what}"
        time.sleep(0.2)


def controller_running(box: Booted) -> None:
    """Configured (`init`, as root, as an operator would after installing) and started."""
    if box.sh(f"test -e {STATE}/pki/ca.crt", check=False).startswith("1"):
        box.sh(f"novacron-controller init --state-dir {STATE} --advertise-address 127.0.0.1")
        box.sh(f"mkdir -p ~/.config/novacron && cp {STATE}/pki/admin/* ~/.config/novacron/")
    box.sh(f"systemctl start {CONTROLLER}")  # Type=notify: returns once READY=1 was received


def agent_running(box: Booted) -> None:
    """Enrolled with a join token (once) and started, its controller too."""
    controller_running(box)
    if box.sh("test -e /var/lib/novacron/agent/pki/node.crt", check=False).startswith("1"):
        created = json.loads(box.sh(f"novacron token create --node-id {NODE} -o json"))
        box.sh(
            "cat > /etc/novacron/agent.yaml <<EOF\nagent:\n"
            f"  node_id: {NODE}\n  controller: 127.0.0.1:7700\n"
            f"  join_token: {created['secret_token']}\n  ca_pin: {created['ca_pin']}\nEOF"
        )
    box.sh(f"systemctl start {AGENT}")  # returns once connected and the first hello answered


def domain_id(name: str) -> str:
    """The host libvirtd's id of a running domain: a new QEMU process gets a new one."""
    return run(["virsh", "-c", HOST["libvirt_uri"], "domid", name], "virsh domid").strip()


def host_domains() -> str:
    """The host libvirtd's own list: the witness of what the agent did."""
    return run(["virsh", "-c", HOST["libvirt_uri"], "list", "--all"], "virsh list")


def test_at_boot_both_units_are_enabled_but_wait_for_their_configuration(node: Booted) -> None:
    for unit, missing in ((CONTROLLER, "novacron-controller init"), (AGENT, "join_token")):
        assert AT_BOOT[unit] == {"ActiveState": "inactive", "Result": "exec-condition"}, unit
        journal = AT_BOOT[f"{unit} journal"]
        assert isinstance(journal, str) and missing in journal, journal
        assert "Failed to set up mount namespacing" not in journal  # the sandbox could be built
    assert node.sh(f"systemctl is-enabled {' '.join(UNITS)}").split() == ["enabled", "enabled"]


def test_the_controller_runs_as_novacron_and_the_watchdog_restarts_it(node: Booted) -> None:
    controller_running(node)
    shown = node.show(CONTROLLER, "ActiveState", "SubState", "MainPID", "StatusText", "User")
    assert (shown["ActiveState"], shown["SubState"]) == ("active", "running"), shown
    assert shown["StatusText"].startswith("serving on 127.0.0.1:7700"), shown
    pid = shown["MainPID"]
    assert node.sh(f"stat -c %U /proc/{pid}").strip() == "novacron"
    owners = node.sh(f"find {STATE} -printf '%u\\n' | sort -u").split()
    assert owners == ["novacron"], owners  # init, run as root, handed the CA to the service
    for unit in UNITS:  # the sandboxes as this systemd sees them: the offline scores documented
        said = node.sh(f"systemd-analyze security --no-pager {unit} | tail -1").strip()
        print(said)
        assert f"level for {unit}: {EXPOSURE[unit]} " in said, said

    dropin = f"/run/systemd/system/{CONTROLLER}.d"
    node.sh(
        f"mkdir -p {dropin} && printf '[Service]\\nWatchdogSec={WATCHDOG_S}\\n'"
        f" > {dropin}/50-test.conf && systemctl daemon-reload && systemctl restart {CONTROLLER}"
    )
    pid = node.show(CONTROLLER, "MainPID")["MainPID"]
    restarts = int(node.show(CONTROLLER, "NRestarts")["NRestarts"])
    # the disk under the store fails: read-only in the daemon's own mount namespace only, so the
    # restarted daemon (a new namespace) finds it writable again
    node.sh(f"nsenter -t {pid} -m mount -t tmpfs -o ro,size=1m tmpfs {STATE}")
    wait_until(
        node, "systemd restarting the controller",
        f"test \"$(systemctl show -p NRestarts --value {CONTROLLER})\" -gt {restarts} && "
        f"systemctl is-active -q {CONTROLLER}",
        timeout_s=WATCHDOG_S + 60,
    )  # fmt: skip
    journal = node.journal(CONTROLLER)
    assert f"Watchdog timeout (limit {WATCHDOG_S}s)" in journal, journal[-2000:]
    assert "is on a read-only filesystem" in journal  # why it stopped feeding it
    assert node.show(CONTROLLER, "MainPID")["MainPID"] != pid
    node.sh(f"rm -r {dropin} && systemctl daemon-reload")

    node.sh(f"systemctl stop {CONTROLLER}")
    stopped = node.show(CONTROLLER, "ActiveState", "Result", "ExecMainStatus")
    assert stopped == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}


def test_the_agent_enrols_reports_ready_and_stops_cleanly(node: Booted) -> None:
    agent_running(node)
    shown = node.show(AGENT, "ActiveState", "SubState", "StatusText", "MainPID")
    assert (shown["ActiveState"], shown["SubState"]) == ("active", "running"), shown
    assert shown["StatusText"].startswith("connected to controller 127.0.0.1:7700"), shown
    listing = node.sh("novacron node list")
    row = next((line for line in listing.splitlines() if line.startswith(NODE)), "")
    assert row.split()[1:2] == ["ready"] and "x86_64" in row.split(), listing
    assert node.sh("test -s /var/lib/novacron/agent/pki/node.crt && echo kept").strip() == "kept"

    node.sh(f"systemctl stop {AGENT}")
    stopped = node.show(AGENT, "ActiveState", "Result", "ExecMainStatus")
    assert stopped == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}
    assert "agent stopping" in node.journal(AGENT)
    node.sh(f"systemctl start {AGENT}")  # and again, with its certificate instead of the token
    assert node.show(AGENT, "ActiveState")["ActiveState"] == "active"


def test_the_sandboxed_agent_runs_a_guest(node: Booted) -> None:
    """The unit's sandbox (read-only system, four capabilities, seccomp, no W+X memory) leaves
    the agent what a VM needs: qemu-img overlays in its state, libvirt, the console log."""
    agent_running(node)
    node.sh("novacron vm deploy sd-guest --image tiny --vcpus 1 --memory-mib 128", timeout=300)
    try:
        assert any(
            line.split()[1:] == ["nc-sd-guest", "running"]
            for line in host_domains().splitlines()[2:]
            if line.strip()
        ), host_domains()
        wait_until(
            node, "the guest's console saying it booted",
            "novacron vm console sd-guest | grep -q 'NovaCron guest sd-guest booted'",
            timeout_s=300,
        )  # fmt: skip
        assert "Failed" not in node.journal(AGENT)

        # SIGTERM ends the agent, not its guests: the same QEMU runs on, and the agent, started
        # again, reports it running where it was
        qemu = domain_id("nc-sd-guest")
        node.sh(f"systemctl stop {AGENT}")
        assert node.show(AGENT, "Result")["Result"] == "success"
        assert domain_id("nc-sd-guest") == qemu
        node.sh(f"systemctl start {AGENT}")
        shown = json.loads(node.sh("novacron vm show sd-guest -o json"))
        assert (shown["state"], shown["node_id"]) == ("running", NODE), shown
        assert domain_id("nc-sd-guest") == qemu
    finally:
        node.sh("novacron vm delete sd-guest", timeout=120)
    assert "nc-sd-guest" not in host_domains()
