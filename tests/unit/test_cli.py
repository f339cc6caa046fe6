"""The novacron CLI against a real in-process gRPC server with a canned EdgeAPI servicer."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
import yaml
from google.protobuf.timestamp_pb2 import Timestamp

from cli.client import EdgeClient
from cli.main import main
from cli.progress import CLEAR_LINE
from shared.pb.v1 import edge_api_pb2 as api
from shared.pb.v1 import edge_api_pb2_grpc
from shared.pb.v1 import types_pb2 as pb

VM_ID = "3f0c9a52-1111-4222-8333-444455556666"


def _ts(seconds_ago: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int((time.time() - seconds_ago) * 1e9))
    return ts


def make_vm(name: str = "web-1", request_id: str = "", vm_id: str = VM_ID) -> pb.VM:
    return pb.VM(
        id=vm_id,
        spec=pb.VMSpec(
            name=name, image="alpine-3.20", vcpus=2, memory_mib=512, labels={"app": "web"}
        ),
        node_id="gw-1",
        desired_state=pb.DESIRED_STATE_RUNNING,
        state=pb.VM_STATE_RUNNING,
        generation=3,
        created_at=_ts(630.5),  # ages have slack: the CLI reads its clock first
        updated_at=_ts(10),
        request_id=request_id,
    )


def make_node(node_id: str = "gw-1") -> pb.Node:
    return pb.Node(
        info=pb.NodeInfo(
            node_id=node_id,
            hostname=f"{node_id}.edge",
            arch="aarch64",
            edge_type=pb.EDGE_TYPE_IOT,
            labels={"site": "berlin", "tier": "edge"},
            location=pb.Location(latitude=52.52, longitude=13.405, country_code="DE"),
            capacity=pb.Capacity(vcpus=4, memory_mib=8192, storage_gib=64),
            hypervisor="QEMU 7.2.0 (tcg)",
            agent_version="0.1.0",
        ),
        condition=pb.NODE_CONDITION_NOT_READY,
        condition_reason="heartbeat missed",
        last_heartbeat=_ts(42.5),
        utilization=pb.Utilization(
            cpu_percent=12.5, memory_used_mib=1024, memory_total_mib=8192, load_1m=0.25
        ),
        allocated=pb.Capacity(vcpus=2, memory_mib=512, storage_gib=4),
        vm_count=1,
        images=[pb.ImageInfo(name="alpine-3.20", kind="kernel", arch="aarch64", size_bytes=9)],
        registered_at=_ts(7200),
    )


@dataclass
class Servicer(edge_api_pb2_grpc.EdgeAPIServicer):
    """Canned answers; names starting with special words trigger chosen status codes."""

    requests: list[Any] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    def DeployVM(self, request: api.DeployVMRequest, context: Any) -> pb.VM:
        self.requests.append(request)
        if request.spec.name == "big":
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "0/2 nodes fit: node-a insufficient memory (need 65536 MiB, free 2048 MiB); "
                "node-b arch mismatch",
            )
        if request.spec.image == "nope":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "unknown image 'nope'")
        vm = make_vm(request.spec.name, request.request_id)
        vm.spec.CopyFrom(request.spec)
        return vm

    def DeployVMs(self, request: api.DeployVMsRequest, context: Any) -> api.DeployVMsResponse:
        self.requests.append(request)
        vms = []
        for i, spec in enumerate(request.specs):
            vm = make_vm(spec.name, f"{request.request_id}#{i}", vm_id=f"{VM_ID[:-1]}{i}")
            vm.spec.CopyFrom(spec)
            if spec.name.startswith("broken"):
                vm.state, vm.state_reason = pb.VM_STATE_FAILED, "qemu exited"
            vms.append(vm)
        return api.DeployVMsResponse(vms=vms, plan=f"{len(vms)} VMs on 2 nodes")

    def MigrateVM(self, request: api.MigrateVMRequest, context: Any) -> api.MigrateVMResponse:
        self.requests.append(request)
        if request.name_or_id == "pinned":
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "no other node can take VM 'pinned' (it runs on 'gw-1'): 1/3 nodes fit",
            )
        vm = make_vm(request.name_or_id)
        vm.node_id, vm.address = request.target_node_id or "mec-1", "10.251.0.7/32"
        if request.postcopy:  # libvirt keeps no completed-job figures after a post-copy
            return api.MigrateVMResponse(vm=vm, source_node_id="gw-1", total_ms=3700.0)
        return api.MigrateVMResponse(
            vm=vm,
            source_node_id="gw-1",
            target_reason="" if request.target_node_id else "mec-1 score 0.912 = ...",
            elapsed_ms=1840.0,
            downtime_ms=97.0,
            memory_bytes=23 * 2**20,
            total_ms=2310.0,
        )

    def GetVM(self, request: api.GetVMRequest, context: Any) -> pb.VM:
        self.requests.append(request)
        if request.name_or_id == "slow":
            self.release.wait(30)
        if request.name_or_id == "offline":
            context.abort(grpc.StatusCode.UNAVAILABLE, "node gw-9 is offline")
        if request.name_or_id not in ("web-1", VM_ID):
            context.abort(grpc.StatusCode.NOT_FOUND, f"vm {request.name_or_id!r} not found")
        vm = make_vm()
        if request.name_or_id == VM_ID:  # one that failed over once
            vm.spec.disconnect.replace_after_s, vm.spec.disconnect.stop_after_s = 0.0, 5.0
            vm.expected_failover = "~22s after its node falls silent"
            vm.failovers.add(
                source_node_id="gw-2",
                target_node_id="gw-1",
                from_generation=1,
                to_generation=2,
                reason="node lost: agent not connected for 10.0s",
                last_heard_at=_ts(70),
                lost_at=_ts(65),
                started_at=_ts(63),
                running_at=_ts(61),
                outcome="running",
            )
        return vm

    def DrainNode(self, request: api.DrainNodeRequest, context: Any) -> pb.Node:
        self.requests.append(request)
        node = make_node(request.node_id)
        node.drain.parallel = request.parallel
        node.drain.active.append("web-1")
        node.drain.failed["db-1"] = "no other node can take VM 'db-1'"
        node.drain.started_at.CopyFrom(_ts(5))
        return node

    def HandleEdgeFailure(
        self, request: api.HandleEdgeFailureRequest, context: Any
    ) -> api.HandleEdgeFailureResponse:
        self.requests.append(request)
        if request.node_id == "gw-1":
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "node 'gw-1' is ready")
        return api.HandleEdgeFailureResponse(
            node_id=request.node_id,
            outcomes=[
                api.FailoverOutcome(vm_name="web-1", target_node_id="gw-1"),
                api.FailoverOutcome(vm_name="db-1", waiting="cannot be placed: 0/2 nodes fit"),
            ],
        )

    def ListVMs(self, request: api.ListVMsRequest, context: Any) -> api.ListVMsResponse:
        self.requests.append(request)
        if request.node_id == "empty":
            return api.ListVMsResponse()
        return api.ListVMsResponse(vms=[make_vm(), make_vm("db-1", vm_id="9abcdef0-0000")])

    def DeleteVM(self, request: api.DeleteVMRequest, context: Any) -> api.DeleteVMResponse:
        self.requests.append(request)
        vm = make_vm()
        vm.state, vm.desired_state = pb.VM_STATE_DELETING, pb.DESIRED_STATE_DELETED
        return api.DeleteVMResponse(vm=vm)

    def SuspendVM(self, request: api.VMRef, context: Any) -> pb.VM:
        self.requests.append(request)
        vm = make_vm()
        vm.state, vm.desired_state = pb.VM_STATE_PAUSED, pb.DESIRED_STATE_PAUSED
        return vm

    def ResumeVM(self, request: api.VMRef, context: Any) -> pb.VM:
        self.requests.append(request)
        return make_vm()

    def GetVMConsole(
        self, request: api.GetVMConsoleRequest, context: Any
    ) -> api.GetVMConsoleResponse:
        self.requests.append(request)
        return api.GetVMConsoleResponse(vm_id=VM_ID, node_id="gw-1", text="login: ")

    def ListNodes(self, request: api.ListNodesRequest, context: Any) -> api.ListNodesResponse:
        self.requests.append(request)
        return api.ListNodesResponse(nodes=[make_node(), make_node("mec-1")])

    def GetNode(self, request: api.GetNodeRequest, context: Any) -> pb.Node:
        self.requests.append(request)
        if request.node_id != "gw-1":
            context.abort(grpc.StatusCode.NOT_FOUND, f"node {request.node_id!r} not found")
        node = make_node()
        if any(isinstance(r, api.DrainNodeRequest) for r in self.requests):  # it has ended
            node.drain.parallel = 2
            node.drain.moved["web-1"] = "gw-2"
            node.drain.failed["db-1"] = "no other node can take VM 'db-1'"
            node.drain.started_at.CopyFrom(_ts(5))
            node.drain.finished_at.CopyFrom(_ts(1))
        return node

    def GetStatus(self, request: api.GetStatusRequest, context: Any) -> api.Status:
        self.requests.append(request)
        return api.Status(
            controller_id="ctl-1",
            version="0.1.0",
            nodes_total=2,
            nodes_ready=1,
            vms_total=2,
            vms_by_state={"VM_STATE_RUNNING": 2},
            store="sqlite",
            uptime_seconds=3700,
        )


@dataclass
class Controller:
    address: str
    servicer: Servicer


@pytest.fixture
def controller() -> Iterator[Controller]:
    servicer = Servicer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    edge_api_pb2_grpc.add_EdgeAPIServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield Controller(f"127.0.0.1:{port}", servicer)
    finally:
        servicer.release.set()
        server.stop(grace=None)


def run(ctl: Controller, *args: str) -> int:
    return main(["--controller", ctl.address, *args])


# -- output --------------------------------------------------------------------------------


def test_node_list_table(controller: Controller, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(controller, "node", "list") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == [
        "NODE",
        "CONDITION",
        "EDGE-TYPE",
        "ARCH",
        "LOCATION",
        "VCPUS",
        "MEMORY-MIB",
        "VMS",
        "LAST-HEARTBEAT",
    ]
    assert out[1].split() == [
        "gw-1",
        "not_ready",
        "iot",
        "aarch64",
        "52.52,13.40",
        "DE",
        "2/4",
        "512/8192",
        "1",
        "42s",
    ]
    assert out[2].startswith("mec-1")


def test_node_show_describe(controller: Controller, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(controller, "node", "show", "gw-1") == 0
    out = capsys.readouterr().out
    assert "Condition:" in out and "not_ready (heartbeat missed)" in out
    assert "  site=berlin\n  tier=edge\n" in out
    assert "alpine-3.20  kind=kernel arch=aarch64" in out
    assert "memory:  1024/8192 MiB" in out
    assert controller.servicer.requests[-1] == api.GetNodeRequest(node_id="gw-1")


def test_vm_list_table_and_node_filter(
    controller: Controller, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(controller, "vm", "list", "--node", "gw-1") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == list(
        ("NAME", "ID", "NODE", "STATE", "DESIRED", "VCPUS", "MEMORY", "IMAGE", "ADDRESS", "AGE")
    )
    assert lines[1].split() == [
        "web-1",
        "3f0c9a52",
        "gw-1",
        "running",
        "running",
        "2",
        "512Mi",
        "alpine-3.20",
        "-",
        "10m",
    ]
    assert controller.servicer.requests[-1] == api.ListVMsRequest(node_id="gw-1")


def test_empty_list_says_so_on_stderr(
    controller: Controller, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(controller, "vm", "list", "--node", "empty") == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "No VMs found." in captured.err


def test_vm_list_json_parses_back(
    controller: Controller, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(controller, "vm", "list", "-o", "json") == 0
    data = json.loads(capsys.readouterr().out)
    first = data["items"][0]
    assert first["id"] == VM_ID
    assert first["state"] == "running"
    assert first["desired_state"] == "running"
    assert first["spec"]["memory_mib"] == 512  # uint64 as a number
    assert first["spec"]["labels"] == {"app": "web"}
    assert first["state_reason"] == ""  # defaults present
    assert len(data["items"]) == 2


def test_global_options_before_command(
    controller: Controller, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["-o", "yaml", "--controller", controller.address, "node", "show", "gw-1"]) == 0
    data = yaml.safe_load(capsys.readouterr().out)
    assert data["info"]["edge_type"] == "iot"
    assert data["condition"] == "not_ready"
    assert data["info"]["location"]["country_code"] == "DE"


def test_node_list_yaml_parses_back(
    controller: Controller, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(controller, "node", "list", "-o", "yaml") == 0
    data = yaml.safe_load(capsys.readouterr().out)
    assert [n["info"]["node_id"] for n in data["items"]] == ["gw-1", "mec-1"]
    assert data["items"][0]["allocated"]["memory_mib"] == 512


def test_status(controller: Controller, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(controller, "status") == 0
    out = capsys.readouterr().out
    assert "Controller:" in out and "ctl-1" in out
    assert "1/2 ready" in out
    assert "running: 2" in out
    assert run(controller, "status", "-o", "json") == 0
    assert json.loads(capsys.readouterr().out)["nodes_total"] == 2


def test_vm_show_suspend_resume_delete(
    controller: Controller, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(controller, "vm", "show", VM_ID) == 0
    out = capsys.readouterr().out
    assert "ID:" in out and VM_ID in out and "app=web" in out
    assert run(controller, "vm", "suspend", "web-1") == 0
    assert "paused" in capsys.readouterr().out
    assert controller.servicer.requests[-1] == api.VMRef(name_or_id="web-1")
    assert run(controller, "vm", "resume", "web-1", "-o", "json") == 0
    assert json.loads(capsys.readouterr().out)["state"] == "running"
    assert run(controller, "vm", "delete", "web-1", "-o", "json") == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["state"], data["desired_state"]) == ("deleting", "deleted")
    assert controller.servicer.requests[-1] == api.DeleteVMRequest(name_or_id="web-1")
    assert run(controller, "vm", "delete", "web-1") == 0
    assert "deletion pending" in capsys.readouterr().out


def test_vm_show_gives_the_disconnect_policy_and_failovers(
    controller: Controller, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(controller, "vm", "show", VM_ID) == 0
    out = capsys.readouterr().out
    assert "replace after 0s; its agent pauses it after 5s alone" in out
    assert "~22s after its node falls silent" in out
    assert "gw-2 -> gw-1 (generation 1 -> 2)" in out
    assert "running 4.0s after lost, 9.0s after last heard" in out


def test_deploy_sends_the_disconnect_policy(controller: Controller) -> None:
    assert run(controller, *DEPLOY, "--replace-after", "never", "--stop-after", "2.5") == 0
    sent = controller.servicer.requests[-1]
    assert isinstance(sent, api.DeployVMRequest)
    assert sent.spec.disconnect.replace_after_s == float("inf")
    assert sent.spec.disconnect.stop_after_s == 2.5
    assert run(controller, *DEPLOY) == 0  # unset: the controller's defaults
    sent = controller.servicer.requests[-1]
    assert not sent.spec.HasField("disconnect")


def test_deploy_refuses_a_negative_stop_after(
    controller: Controller, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(controller, *DEPLOY, "--stop-after", "-1") == 2
    assert "must be >= 0 seconds or 'never'" in capsys.readouterr().err


def test_node_fail_over_lists_each_vm(
    controller: Controller, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(controller, "node", "fail-over", "gw-2", "--node-is-dead") == 0
    assert controller.servicer.requests[-1] == api.HandleEdgeFailureRequest(
        node_id="gw-2", node_is_dead=True
    )
    out = capsys.readouterr().out
    assert "web-1: recreated on gw-1" in out
    assert "db-1: waits: cannot be placed: 0/2 nodes fit" in out
    assert "node gw-2: 1 of 2 VMs replaced" in out
    assert run(controller, "node", "fail-over", "gw-1") != 0
    assert "is ready" in capsys.readouterr().err


def test_vm_console(controller: Controller, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(controller, "vm", "console", "web-1", "--bytes", "4096") == 0
    assert capsys.readouterr().out == "login: \n"
    assert controller.servicer.requests[-1] == api.GetVMConsoleRequest(
        name_or_id="web-1", max_bytes=4096
    )


# -- deploy --------------------------------------------------------------------------------

DEPLOY = ("vm", "deploy", "web-1", "--image", "alpine-3.20", "--vcpus", "2", "--memory-mib", "512")


def test_deploy_generates_and_prints_request_id(
    controller: Controller, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(controller, *DEPLOY, "--label", "app=web", "--label", "tier=") == 0
    captured = capsys.readouterr()
    sent = controller.servicer.requests[-1]
    assert isinstance(sent, api.DeployVMRequest)
    assert len(sent.request_id) == 36
    assert sent.request_id in captured.err
    assert sent.spec == pb.VMSpec(
        name="web-1",
        image="alpine-3.20",
        vcpus=2,
        memory_mib=512,
        labels={"app": "web", "tier": ""},
    )
    assert sent.timeout_seconds == 0
    assert captured.out.splitlines()[1].startswith("web-1")
    assert "\r" not in captured.err  # no spinner when stderr is not a TTY


def test_deploy_reuses_given_request_id(
    controller: Controller, capsys: pytest.CaptureFixture[str]
) -> None:
    for _ in range(2):
        assert run(controller, *DEPLOY, "--request-id", "rid-1", "--wait-timeout", "60") == 0
    sent = controller.servicer.requests[-2:]
    assert [r.request_id for r in sent] == ["rid-1", "rid-1"]
    assert sent[0].timeout_seconds == 60
    capsys.readouterr()
    assert run(controller, *DEPLOY, "--request-id", "rid-1", "-o", "json") == 0
    assert json.loads(capsys.readouterr().out.strip())["request_id"] == "rid-1"


def test_deploy_count_sends_one_batch_named_one_to_n(
    controller: Controller, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("vm", "deploy", "web", "--image", "alpine-3.20", "--vcpus", "1", "--memory-mib")
    assert run(controller, *args, "64", "--count", "3", "--spread-group", "web") == 0
    captured = capsys.readouterr()
    sent = controller.servicer.requests[-1]
    assert isinstance(sent, api.DeployVMsRequest)
    assert [s.name for s in sent.specs] == ["web-1", "web-2", "web-3"]
    assert {s.placement.spread_group for s in sent.specs} == {"web"}
    assert f"deploying web-1..web-3 (request_id {sent.request_id})" in captured.err
    lines = captured.out.splitlines()
    assert [line.split()[0] for line in lines[1:4]] == ["web-1", "web-2", "web-3"]
    assert lines[-1] == "plan: 3 VMs on 2 nodes"

    assert run(controller, "vm", "deploy", "broken", *args[3:], "64", "--count", "2") == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        "not running: broken-1, broken-2 (see `novacron vm show NAME`)"
    )
    for bad, why in (("0", "must be an integer from 1 to 100"), ("101", "must be at most 100")):
        assert main(["vm", "deploy", "web", *args[3:], "64", "--count", bad]) == 2
        assert f"argument --count: {why}, got '{bad}'" in capsys.readouterr().err


def test_migrate_reports_where_how_long_and_why(
    controller: Controller, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(controller, "vm", "migrate", "web-1") == 0
    assert capsys.readouterr().out.splitlines() == [
        "web-1 migrated gw-1 -> mec-1 in 2.3 s (guest paused 97 ms, 23.0 MiB of memory sent "
        "in 1.8 s)",
        "address 10.251.0.7/32 now routed to mec-1",
        "target chosen by placement: mec-1 score 0.912 = ...",
    ]
    args = ("--to", "cloud-1", "--bandwidth-mbit", "200", "--max-downtime-ms", "50")
    assert run(controller, "vm", "move", "web-1", *args, "-o", "json") == 0
    sent = controller.servicer.requests[-1]
    assert (sent.target_node_id, sent.bandwidth_mbit, sent.max_downtime_ms) == ("cloud-1", 200, 50)
    assert json.loads(capsys.readouterr().out)["vm"]["node_id"] == "cloud-1"
    assert run(controller, "vm", "migrate", "web-1", "--to", "cloud-1", "--postcopy") == 0
    assert controller.servicer.requests[-1].postcopy
    assert capsys.readouterr().out.splitlines()[0] == (
        "web-1 migrated gw-1 -> cloud-1 in 3.7 s (post-copy: libvirt reports no pause or "
        "memory figures)"
    )
    assert run(controller, "vm", "migrate", "pinned") == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: RESOURCE_EXHAUSTED: no other node can take VM 'pinned' (it runs on 'gw-1'): "
        "1/3 nodes fit"
    )


def test_deploy_shows_spinner_on_tty(
    controller: Controller, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert run(controller, *DEPLOY) == 0
    err = capsys.readouterr().err
    assert "waiting for web-1 to run 0s" in err
    assert err.endswith(CLEAR_LINE)


# -- errors --------------------------------------------------------------------------------


def test_resource_exhausted_passes_through_verbatim(
    controller: Controller, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("vm", "deploy", "big", "--image", "alpine-3.20", "--vcpus", "1")
    assert run(controller, *args, "--memory-mib", "65536") == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines()[-1] == (
        "error: RESOURCE_EXHAUSTED: 0/2 nodes fit: node-a insufficient memory "
        "(need 65536 MiB, free 2048 MiB); node-b arch mismatch"
    )


def test_invalid_argument(controller: Controller, capsys: pytest.CaptureFixture[str]) -> None:
    args = ("vm", "deploy", "x", "--image", "nope", "--vcpus", "1", "--memory-mib", "64")
    assert run(controller, *args) == 1
    assert "error: INVALID_ARGUMENT: unknown image 'nope'\n" in capsys.readouterr().err


def test_not_found(controller: Controller, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(controller, "vm", "show", "ghost") == 1
    assert capsys.readouterr().err == "error: NOT_FOUND: vm 'ghost' not found\n"
    assert run(controller, "node", "show", "gw-9", "-o", "json") == 1
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "error: NOT_FOUND: node 'gw-9' not found\n")


def test_server_side_unavailable_is_not_reported_as_unreachable(
    controller: Controller, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(controller, "vm", "show", "offline") == 1
    assert capsys.readouterr().err == "error: UNAVAILABLE: node gw-9 is offline\n"


def test_deadline_exceeded(controller: Controller, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(controller, "--timeout", "0.2", "vm", "show", "slow") == 1
    err = capsys.readouterr().err
    assert err.startswith("error: DEADLINE_EXCEEDED: no answer from controller at 127.0.0.1:")
    assert "within 0.2s" in err


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_controller(capsys: pytest.CaptureFixture[str]) -> None:
    address = f"127.0.0.1:{_closed_port()}"
    start = time.monotonic()
    assert main(["--controller", address, "vm", "list"]) == 1
    assert time.monotonic() - start < 5
    err = capsys.readouterr().err
    assert err.startswith(f"error: UNAVAILABLE: cannot reach controller at {address} (")


def test_env_controller_is_honoured(
    controller: Controller, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOVACRON_CONTROLLER", controller.address)
    assert main(["status"]) == 0
    assert "ctl-1" in capsys.readouterr().out
    # --controller wins over the environment
    monkeypatch.setenv("NOVACRON_CONTROLLER", "127.0.0.1:1")
    assert main(["--controller", controller.address, "status"]) == 0


def test_default_controller_address(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from cli.parser import resolve_controller

    monkeypatch.delenv("NOVACRON_CONTROLLER", raising=False)
    assert resolve_controller(None) == "127.0.0.1:7700"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([*DEPLOY[:5], "--vcpus", "0", "--memory-mib", "1"], "--vcpus: must be a positive"),
        ([*DEPLOY[:5], "--vcpus", "two", "--memory-mib", "1"], "--vcpus: must be a positive"),
        ([*DEPLOY[:5], "--vcpus", "1", "--memory-mib", "-5"], "--memory-mib: must be a positive"),
        ([*DEPLOY, "--label", "novalue"], "--label: must be key=value, got 'novalue'"),
        ([*DEPLOY, "--label", "=v"], "--label: must be key=value"),
        ([*DEPLOY, "--label", "a=1", "--label", "a=2"], "duplicate key 'a'"),
        (["vm", "deploy", "x", "--vcpus", "1", "--memory-mib", "1"], "--image"),
        (["vm"], "required"),
        (["vm", "frobnicate"], "invalid choice"),
        (["-o", "xml", "vm", "list"], "invalid choice"),
        (["vm", "list", "--timeout", "0"], "--timeout: must be a positive"),
        (["vm", "console", "x", "--bytes", "-1"], "--bytes: must be an integer >= 0"),
        ([], "required"),
    ],
)
def test_usage_errors_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--controller", "127.0.0.1:1", *argv]) == 2
    assert message in capsys.readouterr().err


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("novacron ")
    assert main(["vm", "deploy", "--help"]) == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "--request-id" in out
    assert main(["--help"]) == 0
    assert "lowercase" in capsys.readouterr().out  # the enum convention is documented


def test_node_drain_follows_the_moves_until_done(
    controller: Controller, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("cli.drain.POLL_S", 0.0)
    assert run(controller, "node", "drain", "gw-1", "--parallel", "2") == 1  # one did not move
    assert controller.servicer.requests[0] == api.DrainNodeRequest(node_id="gw-1", parallel=2)
    out = capsys.readouterr().out
    assert "draining gw-1 (cordoned): 1 VM to move, 2 at a time" in out
    assert "web-1: moving" in out and "web-1: moved to gw-2" in out
    assert "db-1: not moved: no other node can take VM 'db-1'" in out
    assert "gw-1 drained in" in out and "1 moved, 1 did not" in out


class _CallError(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    """An RpcError as grpc raises it, with the parts to_cli_error reads."""

    def __init__(self, details: str, metadata: tuple[tuple[str, str], ...]) -> None:
        self._details, self._metadata = details, metadata

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def initial_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float | None:
        return None

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: object) -> bool:
        return False


def test_an_unavailable_the_controller_sent_is_not_taken_for_an_unreachable_controller() -> None:
    """A node's libvirtd refusing (the controller's own answer) mentions "connection refused"
    too; the controller marks its answers, so the CLI tells them apart."""
    details = "connect qemu+tcp://10.0.0.2/system: Connection refused; the vm runs here again"
    client = EdgeClient("127.0.0.1:1")
    try:
        answered = client.to_cli_error(_CallError(details, (("novacron-answered", "1"),)), 0)
        transport = client.to_cli_error(_CallError("failed to connect: Connection refused", ()), 0)
    finally:
        client.close()
    assert (answered.code, answered.message) == ("UNAVAILABLE", details)
    assert transport.message.startswith("cannot reach controller at 127.0.0.1:1 (")
