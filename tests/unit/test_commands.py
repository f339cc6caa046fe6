"""Typed agent commands and results: every one survives the wire unchanged, the wire the
current controller speaks decodes, and errors map to shared.errors in one place."""

from __future__ import annotations

import pytest

from shared import convert
from shared.commands import (
    AgentCommand,
    ApplyMesh,
    ChangePower,
    CommandError,
    CommandResult,
    CreateVM,
    DeleteVM,
    Envelope,
    FinishMigration,
    LandMigration,
    Migrate,
    MigrationProgress,
    MigrationStats,
    MigrationTarget,
    PowerAction,
    PrepareMigration,
    ReadConsole,
    RotateKey,
    command_name,
    command_vm_id,
)
from shared.domain import (
    EdgeType,
    Location,
    PlacementConstraints,
    VMSpec,
    VMState,
    VMStatus,
)
from shared.errors import FailedPrecondition, Internal, InvalidArgument, NotFound
from shared.mesh import MeshConfig, MeshPeer, MeshPeerStatus, MeshStatus
from shared.pb.v1 import agent_pb2 as apb
from shared.pb.v1 import types_pb2 as pb

VM_ID = "5b0c6d0e-8f0a-4a43-9a55-0d3c1d8d7a01"
SPEC = VMSpec(
    name="web-1",
    image="tiny",
    vcpus=2,
    memory_mib=256,
    labels={"app": "web"},
    disk_gib=3,
    placement=PlacementConstraints(
        near=Location(48.85, 2.35, "FR"),
        max_latency_ms=10.0,
        countries=("DE", "FR"),
        edge_types=(EdgeType.MEC,),
        required_labels=(("tier", "gold"),),
        spread_group="web",
    ),
    bandwidth_mbps=50,
)
TARGET = MigrationTarget(
    libvirt_uri="qemu+tcp://10.213.0.3/system",
    data_uri="tcp://10.213.0.3",
    kernel="/b/images/tiny/vmlinuz",
    initrd="/b/images/tiny/initrd.img",
    disk="/b/vms/x/disk.qcow2",
    console_log="/b/vms/x/console.log",
)
MESH = MeshConfig(
    version=7,
    address="10.250.0.2/32",
    vm_pool="10.251.0.0/16",
    vm_gateway="10.251.255.254",
    peers=(
        MeshPeer(
            node_id="n2",
            public_key="k" * 43 + "=",
            endpoint="10.213.0.3:51820",
            allowed_ips=("10.250.0.3/32",),
            persistent_keepalive_s=25,
            address="10.250.0.3",
        ),
    ),
)

COMMANDS: list[AgentCommand] = [
    CreateVM(VM_ID, SPEC, 3, start_paused=True, address="10.251.0.5/32", gateway="10.251.255.254"),
    CreateVM(VM_ID, SPEC, 1),
    DeleteVM(VM_ID, "web-1"),
    DeleteVM(VM_ID, "web-1", generation=4, address="10.251.0.5/32"),
    *(ChangePower(VM_ID, "web-1", 2, action) for action in PowerAction),
    ReadConsole(VM_ID, "web-1"),
    ReadConsole(VM_ID, "web-1", max_bytes=1024),
    ApplyMesh(MESH),
    RotateKey(),
    PrepareMigration(VM_ID, SPEC, 5, address="10.251.0.5/32", gateway="10.251.255.254"),
    Migrate(
        VM_ID,
        "web-1",
        TARGET,
        5,
        migration_id="mig-1",
        bandwidth_mbit=400,
        max_downtime_ms=50,
        address="10.251.0.5/32",
        postcopy=True,
    ),
    Migrate(VM_ID, "web-1", MigrationTarget("qemu+tcp://h/system", "tcp://h"), 0),
    FinishMigration(VM_ID, SPEC, 5, address="10.251.0.5/32", gateway="10.251.255.254"),
    LandMigration(VM_ID, SPEC, 6, address="10.251.0.5/32", gateway="10.251.255.254"),
    Migrate(
        VM_ID,
        "web-1",
        MigrationTarget("qemu+tcp://h/system", "tcp://h", console_log="/v/x/console.log"),
        4,
        mode="snapshot",
        shutdown_timeout_s=12.5,
    ),
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: command_name(c))
def test_every_command_round_trips(command: AgentCommand) -> None:
    envelope = Envelope(id="c-1", deadline=1_750_000_000.25, command=command)
    wire = convert.envelope_to_pb(envelope)
    assert wire.id == "c-1" and wire.HasField("deadline")
    again = convert.envelope_from_pb(apb.Command.FromString(wire.SerializeToString()))
    assert again == envelope


def test_every_command_type_is_covered() -> None:
    assert {type(c) for c in COMMANDS} == set(AgentCommand.__args__)
    assert {c.action for c in COMMANDS if isinstance(c, ChangePower)} == set(PowerAction)


def test_power_actions_use_the_existing_oneof_members() -> None:
    for action in PowerAction:
        wire = convert.envelope_to_pb(Envelope("p", 0, ChangePower(VM_ID, "web-1", 2, action)))
        assert wire.WhichOneof("action") == action.value
        assert getattr(wire, action.value) == apb.VMTarget(vm_id=VM_ID, name="web-1", generation=2)


def test_no_deadline_is_zero_and_stays_unset() -> None:
    wire = convert.envelope_to_pb(Envelope("c", 0.0, RotateKey()))
    assert not wire.HasField("deadline")
    assert convert.envelope_from_pb(wire).deadline == 0.0


def test_a_command_without_action_is_invalid() -> None:
    with pytest.raises(InvalidArgument, match="no action"):
        convert.envelope_from_pb(apb.Command(id="x"))


def test_the_wire_of_the_current_controller_decodes() -> None:
    """What controller/core_old.py builds (no migration generation, finish as CreateVM)."""
    migrate = apb.Command(
        id="m",
        migrate=apb.MigrateVM(
            vm_id=VM_ID,
            name="web-1",
            target=apb.MigrationTarget(libvirt_uri="qemu+tcp://h/system", data_uri="tcp://h"),
            bandwidth_mbit=100,
        ),
    )
    decoded = convert.envelope_from_pb(migrate)
    assert decoded == Envelope(
        "m",
        0.0,
        Migrate(
            VM_ID, "web-1", MigrationTarget("qemu+tcp://h/system", "tcp://h"), 0, bandwidth_mbit=100
        ),
    )
    finish = apb.Command(
        id="f",
        finish_migration=apb.CreateVM(
            vm_id=VM_ID, spec=pb.VMSpec(name="web-1", image="tiny", vcpus=1, memory_mib=64)
        ),
    )
    command = convert.envelope_from_pb(finish).command
    assert isinstance(command, FinishMigration) and command.generation == 0
    cleanup = apb.Command(id="d", delete=apb.VMTarget(vm_id=VM_ID, name="web-1"))
    assert convert.envelope_from_pb(cleanup).command == DeleteVM(VM_ID, "web-1", 0)
    console = apb.Command(id="r", read_console=apb.ReadConsole(vm_id=VM_ID))
    assert convert.envelope_from_pb(console).command == ReadConsole(VM_ID, "", 65536)


STATUS = VMStatus(VM_ID, "web-1", VMState.PAUSED, 4, "tiny", 2, 256, "migrating")
MESH_STATUS = MeshStatus(
    applied_version=7,
    public_key="p" * 43 + "=",
    address="10.250.0.2/32",
    error="",
    peers=(MeshPeerStatus("n2", "k" * 43 + "=", "10.213.0.3:51820", 3.5, 10, 20),),
)
RESULTS = [
    CommandResult("ok"),
    CommandResult("vm", vm=STATUS),
    CommandResult(
        "stale",
        error=CommandError("FAILED_PRECONDITION", "stale generation: this node holds generation 4"),
        vm=STATUS,
    ),
    CommandResult("console", console="NovaCron guest web-1 up\n"),
    CommandResult("mesh", mesh=MESH_STATUS),
    CommandResult("mesh-failed", error=CommandError("INTERNAL", "uapi: boom"), mesh=MESH_STATUS),
    CommandResult("prepare", migration_target=TARGET),
    CommandResult("finish", vm=STATUS, migration_stats=MigrationStats(612.0, 104.0, 9_437_184)),
]


@pytest.mark.parametrize("result", RESULTS, ids=lambda r: r.command_id)
def test_every_result_round_trips(result: CommandResult) -> None:
    wire = convert.result_to_pb(result)
    assert wire.ok == result.ok
    again = convert.result_from_pb(apb.CommandResult.FromString(wire.SerializeToString()))
    assert again == result


def test_a_failure_without_error_details_still_fails() -> None:
    result = convert.result_from_pb(apb.CommandResult(command_id="x", ok=False))
    assert result.error is not None and result.error.code == "INTERNAL"
    assert not result.ok


def test_migration_progress_round_trips() -> None:
    progress = MigrationProgress(VM_ID, "mig-1", 300 << 20, 200 << 20, 100 << 20, 4 << 20, True)
    wire = convert.migration_progress_to_pb(progress)
    message = apb.AgentMessage(migration_progress=wire)
    decoded = apb.AgentMessage.FromString(message.SerializeToString())
    assert decoded.WhichOneof("body") == "migration_progress"
    assert convert.migration_progress_from_pb(decoded.migration_progress) == progress


def test_installation_fields_are_on_the_wire() -> None:
    welcome = apb.Welcome(controller_id="c", installation_id="inst-1", take_over=True)
    assert apb.Welcome.FromString(welcome.SerializeToString()).installation_id == "inst-1"
    hello = apb.Hello(known_installation_id="inst-0")
    assert apb.Hello.FromString(hello.SerializeToString()).known_installation_id == "inst-0"


def test_command_error_is_the_one_mapping() -> None:
    error = CommandError.of(NotFound("vm x is not on this node"))
    assert error == CommandError("NOT_FOUND", "vm x is not on this node")
    assert isinstance(error.to_exception(), NotFound)
    exc = CommandError("FAILED_PRECONDITION", "stale").to_exception("node n1")
    assert isinstance(exc, FailedPrecondition) and str(exc) == "node n1: stale"
    crash = CommandError.of(KeyError("boom"))
    assert crash.code == "INTERNAL" and "agent error" in crash.message
    assert isinstance(CommandError("NO_SUCH_CODE", "?").to_exception(), Internal)


def test_command_vm_id_and_name() -> None:
    assert command_vm_id(RotateKey()) == "" and command_vm_id(ApplyMesh(MESH)) == ""
    assert command_vm_id(COMMANDS[0]) == VM_ID
    assert [command_name(c) for c in COMMANDS[4:8]] == ["suspend", "resume", "start", "stop"]
