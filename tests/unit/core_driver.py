"""A hand-driven controller core for example-based tests: feed it events, look at the
instructions, answer commands explicitly. No sockets, no sleeps; time is `now`."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from controller.core import ControllerCore, Settings
from controller.core import events as ev
from controller.core.instructions import Instruction, Persist, Reply, SendCommand
from controller.placement import ScoredEngine
from controller.records import AuditEntry, MigrationRecord, NodeRecord, Tombstone, VMRecord
from shared import commands as c
from shared.domain import (
    Capacity,
    EdgeType,
    ImageInfo,
    Location,
    NodeInfo,
    Utilization,
    VMSpec,
    VMState,
    VMStatus,
)
from shared.errors import NovaCronError

INSTALLATION = "inst-test"


def node_info(node_id: str) -> NodeInfo:
    return NodeInfo(
        node_id=node_id,
        hostname=node_id,
        arch="x86_64",
        edge_type=EdgeType.MEC,
        capacity=Capacity(vcpus=4, memory_mib=1024, storage_gib=100),
        location=Location(52.5, 13.4, "DE"),
        labels={"site": node_id},
    )


@dataclass
class Driver:
    now: float = 1000.0
    store: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {
            "vms": {},
            "nodes": {},
            "migrations": {},
            "tombstones": {},
            "failovers": {},
            "drains": {},
            "tokens": {},
            "credentials": {},
            "service_tokens": {},
        }
    )
    audit: list[AuditEntry] = field(default_factory=list)
    core: ControllerCore = field(init=False)
    out: list[Instruction] = field(default_factory=list)
    sessions: dict[str, str] = field(default_factory=dict)
    n: int = 0
    fail_next_persist: NovaCronError | None = None

    def __post_init__(self) -> None:
        self.core = self.fresh_core()

    def fresh_core(self) -> ControllerCore:
        core = ControllerCore(Settings(installation_id=INSTALLATION), ScoredEngine())
        core.load(
            self.store["nodes"].values(),
            self.store["vms"].values(),
            self.store["migrations"].values(),
            self.store["tombstones"].values(),
            now=self.now,
            failovers=self.store["failovers"].values(),
            drains=self.store["drains"].values(),
            tokens=self.store["tokens"].values(),
            credentials=self.store["credentials"].values(),
            service_tokens=self.store["service_tokens"].values(),
        )
        return core

    def restart(self) -> None:
        """The controller dies: memory is gone, the store stays."""
        self.core = self.fresh_core()
        self.sessions.clear()

    def sid(self) -> str:
        self.n += 1
        return f"st{self.n}"

    def feed(self, kind: type[ev.Event], **fields: Any) -> list[Instruction]:
        stimulus = fields.pop("stimulus_id", None) or self.sid()
        event = kind(stimulus_id=stimulus, now=self.now, **fields)
        out = self.core.handle(event)
        if out and isinstance(out[0], Persist):
            if self.fail_next_persist is not None:
                error, self.fail_next_persist = self.fail_next_persist, None
                self.core.rollback()
                out = self.core.handle(
                    ev.PersistFailed(
                        stimulus_id=self.sid(), now=self.now, failed=event, error=error
                    )
                )
            else:
                self._apply(out[0])
        self.out.extend(out)
        return out

    def _apply(self, p: Persist) -> None:
        for vm_id in p.forget_vms:
            self.store["vms"].pop(vm_id, None)
        for vm in p.vms:
            self.store["vms"][vm.id] = vm
        for node in p.nodes:
            self.store["nodes"][node.node_id] = node
        for node_id in p.forget_nodes:
            self.store["nodes"].pop(node_id, None)
        for mig in p.migrations:
            self.store["migrations"][mig.id] = mig
        for stone in p.tombstones:
            self.store["tombstones"][stone.vm_id] = stone
        for record in p.failovers:
            self.store["failovers"][record.id] = record
        for drain in p.drains:
            self.store["drains"][drain.node_id] = drain
        for token in p.tokens:
            self.store["tokens"][token.id] = token
        for credential in p.credentials:
            self.store["credentials"][credential.node_id] = credential
        for service in p.service_tokens:
            self.store["service_tokens"][service.id] = service
        self.audit.extend(p.audit)

    # ------------------------------------------------------------ agents

    def hello(self, node_id: str, *vms: VMStatus, installation: str = INSTALLATION) -> None:
        self.sessions[node_id] = f"{node_id}-{self.sid()}"
        self.feed(
            ev.AgentHello,
            node_id=node_id,
            session_id=self.sessions[node_id],
            info=node_info(node_id),
            images=(ImageInfo("tiny", "kernel", "x86_64"),),
            vms=vms,
            known_installation_id=installation,
        )

    def disconnect(self, node_id: str) -> None:
        self.feed(ev.AgentDisconnected, node_id=node_id, session_id=self.sessions.pop(node_id))

    def report(self, node_id: str, status: VMStatus) -> None:
        self.feed(
            ev.AgentVMStatus, node_id=node_id, session_id=self.sessions[node_id], status=status
        )

    def heartbeat(self, node_id: str, *vms: VMStatus) -> None:
        self.feed(
            ev.AgentHeartbeat,
            node_id=node_id,
            session_id=self.sessions[node_id],
            utilization=Utilization(),
            vms=vms,
        )

    def sent(self, kind: type[Any], node_id: str = "") -> SendCommand:
        """The last command of that type sent (to `node_id`), not yet answered."""
        for ins in reversed(self.out):
            if (
                isinstance(ins, SendCommand)
                and isinstance(ins.envelope.command, kind)
                and (not node_id or ins.node_id == node_id)
            ):
                return ins
        raise AssertionError(f"no {kind.__name__} sent to {node_id or 'any node'}")

    def commands(self, kind: type[Any]) -> list[SendCommand]:
        return [
            i
            for i in self.out
            if isinstance(i, SendCommand) and isinstance(i.envelope.command, kind)
        ]

    def answer(self, send: SendCommand, error: c.CommandError | None = None, **extra: Any) -> None:
        self.feed(
            ev.AgentResult,
            node_id=send.node_id,
            session_id=send.session_id,
            result=c.CommandResult(send.envelope.id, error=error, **extra),
        )

    def expire(self, send: SendCommand) -> None:
        self.now = send.envelope.deadline + 0.1
        self.feed(ev.TimerFired, key=f"cmd:{send.envelope.id}")

    def reply(self, stimulus_id: str) -> Reply:
        for ins in self.out:
            if isinstance(ins, Reply) and ins.to == stimulus_id:
                return ins
        raise AssertionError(f"no reply to {stimulus_id}")

    def replied(self, stimulus_id: str) -> bool:
        return any(isinstance(i, Reply) and i.to == stimulus_id for i in self.out)

    # ------------------------------------------------------------ shortcuts

    def deploy(self, name: str, node_id: str, pin: bool = False) -> VMRecord:
        """Deploy `name`; it must land on `node_id` (equal nodes: placement breaks the tie by
        id), or is pinned there by label."""
        spec = VMSpec(name, "tiny", 1, 128)
        if pin:
            labels = (("site", node_id),)
            spec = replace(spec, placement=replace(spec.placement, required_labels=labels))
        self.feed(ev.DeployRequested, spec=spec, stimulus_id=f"deploy-{name}")
        create = self.sent(c.CreateVM, node_id)
        cmd = create.envelope.command
        assert isinstance(cmd, c.CreateVM)
        self.answer(create, vm=status(cmd.vm_id, name, cmd.generation))
        reply = self.reply(f"deploy-{name}")
        assert reply.error is None, reply.error
        assert isinstance(reply.value, VMRecord)
        return self.core.state.vms[reply.value.id]

    def vm(self, vm_id: str) -> VMRecord:
        return self.core.state.vms[vm_id]

    def migration(self, vm_id: str) -> MigrationRecord:
        found = self.core.state.latest_migration(vm_id)
        assert found is not None
        return found

    def stored_vm(self, vm_id: str) -> VMRecord:
        vm: VMRecord = self.store["vms"][vm_id]
        return vm

    def stored_migration(self, mig_id: str) -> MigrationRecord:
        mig: MigrationRecord = self.store["migrations"][mig_id]
        return mig

    def tombstone(self, vm_id: str) -> Tombstone | None:
        stone: Tombstone | None = self.store["tombstones"].get(vm_id)
        return stone

    def node(self, node_id: str) -> NodeRecord:
        return self.core.state.nodes[node_id]


def status(
    vm_id: str, name: str, generation: int = 1, state: VMState = VMState.RUNNING
) -> VMStatus:
    return VMStatus(vm_id, name, state, generation, "tiny", 1, 128)
