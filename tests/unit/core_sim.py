"""A deterministic world around the pure controller core: a store, simulated agents (the
agent's own fencing rule, libvirt's migration semantics), a lossy network and a clock, all
driven by one seeded random generator. The invariants are checked after every step; a
failing seed prints the steps that reproduce it.

Simulated agents are not a fake of libvirt for driver tests: they stand for what the core
cannot see (what really runs where), so the invariants are judged by an independent witness.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field, replace
from typing import Any

from controller.core import ControllerCore, Settings
from controller.core import events as ev
from controller.core.instructions import (
    ArmTimer,
    CloseSession,
    Instruction,
    Persist,
    Reply,
    SendCommand,
    Welcome,
)
from controller.placement import ScoredEngine
from controller.records import FailoverRecord, MigrationRecord, NodeRecord, Tombstone, VMRecord
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
from shared.errors import NovaCronError, Unavailable

INSTALLATION = "inst-1"
NODES = ("n1", "n2", "n3")


@dataclass
class Copy:
    generation: int
    state: VMState
    name: str
    stop_after: float | None = None  # from the spec it was created with (agent self-fencing)


@dataclass
class SimAgent:
    node_id: str
    vms: dict[str, Copy] = field(default_factory=dict)
    staged: set[str] = field(default_factory=set)
    incoming: dict[str, Copy] = field(default_factory=dict)  # cold/snapshot files, not landed
    session: str = ""  # "" = not connected
    welcomed: bool = False
    confirmed_at: float = 0.0  # the controller last heard it (its hello or a heartbeat)

    def info(self) -> NodeInfo:
        return NodeInfo(
            node_id=self.node_id,
            hostname=self.node_id,
            arch="x86_64",
            edge_type=EdgeType.MEC,
            capacity=Capacity(vcpus=4, memory_mib=1024, storage_gib=100),
            location=Location(52.5, 13.4, "DE"),
        )

    def statuses(self) -> tuple[VMStatus, ...]:
        return tuple(
            VMStatus(vm_id, copy.name, copy.state, copy.generation, "tiny", 1, 128)
            for vm_id, copy in sorted(self.vms.items())
        )

    def status(self, vm_id: str) -> VMStatus | None:
        copy = self.vms.get(vm_id)
        if copy is None:
            return None
        return VMStatus(vm_id, copy.name, copy.state, copy.generation, "tiny", 1, 128)

    def refuse_stale(self, vm_id: str, generation: int) -> c.CommandError | None:
        """The agent's rule (agent/fencing.py): older than what it holds is refused."""
        held = self.vms.get(vm_id)
        if held is not None and generation and generation < held.generation:
            return c.CommandError(
                "FAILED_PRECONDITION", f"stale generation: this node holds {held.generation}"
            )
        return None


def describe(event: ev.Event) -> str:
    """One short line per event for a failing seed's story."""
    skip = {"stimulus_id", "now", "info", "utilization", "images", "latencies", "mesh"}
    parts = []
    for name in getattr(event, "__dataclass_fields__", {}):
        if name in skip:
            continue
        value = getattr(event, name)
        if isinstance(value, c.CommandResult):
            err = f" ERR {value.error.message[:50]}" if value.error else ""
            vm = f" vm={value.vm.name}@{value.vm.generation}/{value.vm.state}" if value.vm else ""
            value = f"{value.command_id}{err}{vm}"
        elif isinstance(value, tuple):
            value = [f"{v.name}@{v.generation}/{v.state}" for v in value if isinstance(v, VMStatus)]
        elif isinstance(value, VMStatus):
            value = f"{value.name}@{value.generation}/{value.state}"
        elif isinstance(value, VMSpec):
            value = value.name
        parts.append(f"{name}={value}")
    return f"t={event.now:.1f} {type(event).__name__} {' '.join(parts)}"[:220]


def durable(vms: dict[str, VMRecord]) -> dict[str, tuple[object, ...]]:
    """What must survive a restart: where a VM should run, at which generation, as what
    (its observed state is re-learnt from the nodes)."""
    return {
        vm_id: (vm.node_id, vm.generation, vm.desired, vm.migrating_to, vm.spec, vm.address)
        for vm_id, vm in vms.items()
    }


class SimWorld:
    def __init__(self, seed: int, *, loss: float = 0.05, persist_failures: float = 0.03) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.loss = loss
        self.persist_failures = persist_failures
        self.now = 1_000.0
        self.steps: list[str] = []
        self.agents = {n: SimAgent(n) for n in NODES}
        # the store: what a restarted controller would load
        self.vms: dict[str, VMRecord] = {}
        self.nodes: dict[str, NodeRecord] = {}
        self.migrations: dict[str, MigrationRecord] = {}
        self.tombstones: dict[str, Tombstone] = {}
        self.failovers: dict[str, FailoverRecord] = {}
        self.core = self._new_core()
        self.down: list[tuple[str, c.Envelope, str]] = []  # (node, command, session)
        self.up: list[ev.Event] = []
        self.timers: list[ArmTimer] = []
        self.waiting: dict[str, str] = {}  # stimulus -> what was asked
        self.acked: dict[str, int] = {}  # VM ids a deploy acknowledged -> generation
        self.deleted: set[str] = set()  # VM ids whose delete was requested
        self.generations: dict[str, int] = {}
        self._n = 0
        self.replies: list[tuple[str, Reply]] = []
        self.answered: set[str] = set()

    # ------------------------------------------------------------ plumbing

    def _new_core(self) -> ControllerCore:
        settings = Settings(
            controller_id="ctl",
            installation_id=INSTALLATION,
            heartbeat_interval=5.0,
            command_timeout=30.0,
            deploy_timeout=60.0,
        )
        core = ControllerCore(settings, ScoredEngine())
        core.load(
            self.nodes.values(),
            self.vms.values(),
            self.migrations.values(),
            self.tombstones.values(),
            now=self.now,
            failovers=self.failovers.values(),
        )
        return core

    def sid(self, what: str) -> str:
        self._n += 1
        return f"s{self.seed}-{self._n}-{what}"

    def feed(self, event: ev.Event) -> None:
        self.steps.append(describe(event))
        if isinstance(event, ev.AgentHello | ev.AgentHeartbeat):
            agent = self.agents[event.node_id]
            if agent.session == event.session_id:  # delivered: the agent's contact is confirmed
                agent.confirmed_at = self.now
        instructions = self.core.handle(event)
        if instructions and isinstance(instructions[0], Persist):
            if self.rng.random() < self.persist_failures and not isinstance(
                event, ev.PersistFailed
            ):
                self.steps.append("  !! persist failed")
                self.core.rollback()
                error = Unavailable("database is locked")
                failed = ev.PersistFailed(
                    stimulus_id=self.sid("pf"), now=self.now, failed=event, error=error
                )
                follow = self.core.handle(failed)
                assert not (follow and isinstance(follow[0], Persist)), follow
                self.run(follow)
                return
            self._apply(instructions[0])
            instructions = instructions[1:]
        self.run(instructions)

    def _apply(self, p: Persist) -> None:
        for vm_id in p.forget_vms:
            self.vms.pop(vm_id, None)
        for vm in p.vms:
            self.vms[vm.id] = vm
        for node in p.nodes:
            self.nodes[node.node_id] = node
        for mig in p.migrations:
            self.migrations[mig.id] = mig
        for stone in p.tombstones:
            self.tombstones[stone.vm_id] = stone
        for record in p.failovers:
            self.failovers[record.id] = record

    def run(self, instructions: list[Instruction]) -> None:
        for ins in instructions:
            assert not isinstance(ins, Persist), "a Persist that is not first"
            if isinstance(ins, SendCommand):
                self.down.append((ins.node_id, ins.envelope, ins.session_id))
                cmd = ins.envelope.command
                what = c.command_name(cmd)
                gen = getattr(cmd, "generation", "")
                self.steps.append(f"    -> {ins.node_id} {ins.envelope.id} {what} {gen}")
            elif isinstance(ins, ArmTimer):
                self.timers.append(ins)
            elif isinstance(ins, Reply):
                assert ins.to not in self.answered, f"request {ins.to} answered twice"
                self.answered.add(ins.to)
                asked = self.waiting.pop(ins.to, "?")
                answer = "ok" if ins.error is None else f"error {str(ins.error)[:80]}"
                self.steps.append(f"    <- reply to {asked}: {answer}")
                self.replies.append((asked, ins))
                if asked.startswith("deploy") and ins.error is None:
                    assert isinstance(ins.value, VMRecord)
                    self.acked.setdefault(ins.value.id, ins.value.generation)
                elif asked.startswith("batch") and ins.error is None:
                    vms, _ = ins.value  # type: ignore[misc]
                    for vm in vms:  # a batch answers every VM it admitted, running or not
                        if vm.state is VMState.RUNNING:
                            self.acked.setdefault(vm.id, vm.generation)
            elif isinstance(ins, Welcome):
                agent = self.agents[ins.node_id]
                if agent.session == ins.session_id:
                    agent.welcomed = True
            elif isinstance(ins, CloseSession):
                agent = self.agents[ins.node_id]
                if agent.session == ins.session_id:
                    self.disconnect(ins.node_id, ins.reason)

    # ------------------------------------------------------------ the agents

    def disconnect(self, node_id: str, reason: str = "disconnected") -> None:
        agent = self.agents[node_id]
        if not agent.session:
            return
        session, agent.session, agent.welcomed = agent.session, "", False
        self.down = [d for d in self.down if d[0] != node_id]
        self.feed(
            ev.AgentDisconnected(
                stimulus_id=self.sid("bye"),
                now=self.now,
                node_id=node_id,
                session_id=session,
                reason=reason,
            )
        )

    def connect(self, node_id: str) -> None:
        agent = self.agents[node_id]
        if agent.session:
            self.disconnect(node_id)
        agent.session = self.sid(f"sess-{node_id}")
        self.feed(
            ev.AgentHello(
                stimulus_id=self.sid("hello"),
                now=self.now,
                node_id=node_id,
                session_id=agent.session,
                info=agent.info(),
                images=(ImageInfo("tiny", "kernel", "x86_64"),),
                vms=agent.statuses(),
                known_installation_id=INSTALLATION,
            )
        )

    def execute(self, node_id: str, env: c.Envelope) -> list[ev.Event]:
        """What the node does with a command, and the messages it sends up."""
        agent = self.agents[node_id]
        cmd = env.command
        out: list[ev.Event] = []
        error: c.CommandError | None = None
        extra: dict[str, Any] = {}
        vm_id = c.command_vm_id(cmd)
        if isinstance(cmd, c.CreateVM):
            error = agent.refuse_stale(vm_id, cmd.generation)
            held = agent.vms.get(vm_id)
            if error is None and (held is None or held.generation < cmd.generation):
                state = VMState.PAUSED if cmd.start_paused else VMState.RUNNING
                stop_after = cmd.spec.disconnect.stop_after_s
                agent.vms[vm_id] = Copy(cmd.generation, state, cmd.spec.name, stop_after)
        elif isinstance(cmd, c.DeleteVM):
            error = agent.refuse_stale(vm_id, cmd.generation)
            if error is None:
                agent.vms.pop(vm_id, None)
                agent.staged.discard(vm_id)
                agent.incoming.pop(vm_id, None)
        elif isinstance(cmd, c.ChangePower):
            error = agent.refuse_stale(vm_id, cmd.generation)
            held = agent.vms.get(vm_id)
            if error is None and held is None:
                error = c.CommandError("NOT_FOUND", "no such VM here")
            elif error is None and held is not None:  # as libvirt does
                stopped = held.state is VMState.STOPPED
                if cmd.action is c.PowerAction.START:
                    held.state = VMState.RUNNING if stopped else held.state
                elif cmd.action is c.PowerAction.STOP:
                    held.state = VMState.STOPPED
                elif stopped:
                    error = c.CommandError("FAILED_PRECONDITION", "the vm is stopped")
                else:
                    paused = cmd.action is c.PowerAction.SUSPEND
                    held.state = VMState.PAUSED if paused else VMState.RUNNING
        elif isinstance(cmd, c.ReadConsole):
            extra["console"] = "login:"
        elif isinstance(cmd, c.PrepareMigration):
            if vm_id in agent.vms:
                error = c.CommandError("ALREADY_EXISTS", "already here")
            else:
                agent.staged.add(vm_id)
                extra["migration_target"] = c.MigrationTarget(f"qemu+tcp://{node_id}", "tcp://x")
        elif isinstance(cmd, c.Migrate) and cmd.mode != "live":
            target = cmd.target.libvirt_uri.removeprefix("qemu+tcp://")
            held, dest = agent.vms.get(vm_id), self.agents.get(target)
            if held is None or dest is None:
                error = c.CommandError("NOT_FOUND", "no such VM here")
            elif self.rng.random() < 0.3:  # stopped, the upload failed: it runs here again
                error = c.CommandError("UNAVAILABLE", "upload failed; the vm runs here again")
            else:  # stopped here (kept, startable), its files in the target's directory
                held.state = VMState.STOPPED
                dest.incoming[vm_id] = Copy(cmd.generation, VMState.RUNNING, held.name,
                                            held.stop_after)  # fmt: skip
        elif isinstance(cmd, c.LandMigration):
            arrived = agent.incoming.get(vm_id)
            if arrived is None or vm_id in agent.vms:
                error = c.CommandError("NOT_FOUND", "nothing arrived")
            elif self.rng.random() < 0.2:
                error = c.CommandError("INTERNAL", "restore failed")
            else:
                agent.vms[vm_id] = agent.incoming.pop(vm_id)
                agent.staged.discard(vm_id)
        elif isinstance(cmd, c.Migrate):
            target = cmd.target.libvirt_uri.removeprefix("qemu+tcp://")
            held = agent.vms.get(vm_id)
            dest = self.agents.get(target)
            if held is None or dest is None:
                error = c.CommandError("NOT_FOUND", "no such VM here")
            elif self.rng.random() < 0.3 or vm_id in dest.vms:
                error = c.CommandError("INTERNAL", "libvirt: migration failed; rolled back")
            else:  # libvirt moves it: the copy that arrives carries the new generation
                del agent.vms[vm_id]
                dest.vms[vm_id] = Copy(cmd.generation, VMState.RUNNING, held.name, held.stop_after)
                dest.staged.discard(vm_id)
                if dest.session and dest.welcomed:
                    status = dest.status(vm_id)
                    assert status is not None
                    out.append(
                        ev.AgentVMStatus(
                            stimulus_id=self.sid("arrived"),
                            now=self.now,
                            node_id=target,
                            session_id=dest.session,
                            status=status,
                        )
                    )
        elif isinstance(cmd, c.FinishMigration):
            held = agent.vms.get(vm_id)
            if held is None:
                error = c.CommandError("NOT_FOUND", "has not arrived")
            else:
                held.generation = max(held.generation, cmd.generation)
                extra["migration_stats"] = c.MigrationStats(500.0, 50.0, 1 << 20)
        status = agent.status(vm_id) if vm_id else None
        result = c.CommandResult(env.id, error=error, vm=status, **extra)
        out.append(
            ev.AgentResult(
                stimulus_id=self.sid("result"),
                now=self.now,
                node_id=node_id,
                session_id=agent.session,
                result=result,
            )
        )
        return out

    # ------------------------------------------------------------ steps

    def request(self, kind: type[ev.Event], what: str, **fields: Any) -> None:
        stimulus = self.sid("req")
        self.waiting[stimulus] = what
        if kind is ev.DeleteRequested:
            with contextlib.suppress(NovaCronError):
                self.deleted.add(self.core.state.find_vm(fields["name_or_id"]).id)
        self.feed(kind(stimulus_id=stimulus, now=self.now, **fields))

    def step(self) -> None:
        r = self.rng.random()
        names = [f"vm-{i}" for i in range(5)]
        offline = [n for n, a in self.agents.items() if not a.session]
        if r < 0.30 and self.down:
            node, env, session = self.down.pop(self.rng.randrange(len(self.down)))
            agent = self.agents[node]
            if agent.session != session or self.rng.random() < self.loss:
                return  # lost on the way
            for message in self.execute(node, env):
                self.up.append(message)
                if self.rng.random() < 0.05:
                    self.up.append(message)  # duplicated
        elif r < 0.55 and self.up:
            message = self.up.pop(self.rng.randrange(len(self.up)))
            agent = self.agents[getattr(message, "node_id", "")]
            if self.rng.random() < self.loss or agent.session != message.session_id:
                return
            self.feed(replace(message, now=self.now))  # type: ignore[type-var]
        elif r < 0.67:
            for agent in self.agents.values():
                if agent.session and agent.welcomed:
                    self.feed(
                        ev.AgentHeartbeat(
                            stimulus_id=self.sid("hb"),
                            now=self.now,
                            node_id=agent.node_id,
                            session_id=agent.session,
                            utilization=Utilization(),
                            vms=agent.statuses(),
                        )
                    )
        elif r < 0.70 or (offline and r < 0.72):
            self.connect(self.rng.choice(offline or list(NODES)))
        elif r < 0.715:
            self.disconnect(self.rng.choice(NODES))
        elif r < 0.722:
            self.restart_controller()
        elif r < 0.76:
            self.advance(self.rng.choice((0.2, 0.5, 1.0, 3.0, 3.0, 20.0, 45.0, 400.0)))
        elif r < 0.82:
            name = self.rng.choice(names)
            spec = VMSpec(name, "tiny", 1, 128)
            self.request(ev.DeployRequested, f"deploy {name}", spec=spec, request_id=name)
        elif r < 0.84:
            batch = self.rng.sample(names, 2)
            specs = tuple(VMSpec(n, "tiny", 1, 128) for n in batch)
            self.request(ev.DeployManyRequested, f"batch {batch}", specs=specs)
        elif r < 0.87:
            name = self.rng.choice(names)
            self.request(ev.DeleteRequested, f"delete {name}", name_or_id=name)
        elif r < 0.91:
            name = self.rng.choice(names)
            paused = self.rng.random() < 0.5
            self.request(ev.PowerRequested, f"power {name}", name_or_id=name, paused=paused)
        elif r < 0.92:
            node = self.rng.choice(NODES)
            parallel = self.rng.choice((1, 2))
            self.request(ev.DrainRequested, f"drain {node}", node_id=node, parallel=parallel)
        elif r < 0.935:
            node = self.rng.choice(NODES)
            self.request(ev.CordonRequested, f"uncordon {node}", node_id=node, cordoned=False)
        else:
            name = self.rng.choice(names)
            target = self.rng.choice(("", *NODES))
            mode = self.rng.choice(("live", "live", "cold", "snapshot"))
            self.request(
                ev.MigrateRequested,
                f"migrate {name} ({mode})",
                name_or_id=name,
                target=target,
                mode=mode,
            )

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.steps.append(f"clock +{seconds}s")
        self.self_fence()
        due = sorted((t for t in self.timers if t.at <= self.now), key=lambda t: t.at)
        self.timers = [t for t in self.timers if t.at > self.now]
        for timer in due:
            self.feed(ev.TimerFired(stimulus_id=self.sid("timer"), now=self.now, key=timer.key))
        self.feed(ev.Tick(stimulus_id=self.sid("tick"), now=self.now))

    def self_fence(self) -> None:
        """The agents' rule (agent/self_fence.py): `stop_after` without a confirmed contact
        with the controller, a running copy pauses itself, and the agent starts a new
        session. It acts before the controller's tick at the same instant: it is the
        controller that adds the margin."""
        for agent in self.agents.values():
            fenced = False
            for vm_id, copy in agent.vms.items():
                alone = self.now - agent.confirmed_at
                stop_after = copy.stop_after
                if copy.state is VMState.RUNNING and stop_after is not None and alone >= stop_after:
                    copy.state = VMState.PAUSED
                    fenced = True
                    self.steps.append(f"  {agent.node_id} self-fences {vm_id}")
            if fenced:
                self.disconnect(agent.node_id, "self-fenced: no contact with the controller")

    def restart_controller(self) -> None:
        """Kill the controller: everything in memory is gone; it starts from the store."""
        self.steps.append("controller restart")
        self.core = self._new_core()
        self.down.clear()
        self.up.clear()
        self.timers.clear()
        self.waiting.clear()
        for agent in self.agents.values():
            agent.session, agent.welcomed = "", False

    # ------------------------------------------------------------ invariants

    def check(self) -> None:
        core = self.core.state
        # the store holds exactly what the core holds durably (persist, then act)
        assert durable(self.vms) == durable(core.vms), "store and core disagree on VMs"
        assert self.migrations == core.migrations, "store and core disagree on migrations"
        assert self.tombstones == core.tombstones, "store and core disagree on tombstones"
        assert self.failovers == core.failovers, "store and core disagree on failovers"
        # no acknowledged VM is ever lost
        for vm_id in self.acked:
            if vm_id not in self.deleted:
                assert vm_id in self.vms, f"acknowledged VM {vm_id} lost"
        # generations never decrease
        for vm_id, vm in core.vms.items():
            assert vm.generation >= self.generations.get(vm_id, 0), f"{vm_id} generation fell"
            self.generations[vm_id] = vm.generation
        # never running on two nodes at once at the same generation
        running: dict[tuple[str, int], list[str]] = {}
        for agent in self.agents.values():
            for vm_id, copy in agent.vms.items():
                if copy.state in (VMState.RUNNING, VMState.PAUSED):
                    running.setdefault((vm_id, copy.generation), []).append(agent.node_id)
        for (vm_id, gen), where in running.items():
            assert len(where) == 1, f"{vm_id} runs at generation {gen} on {where}"
        # a failover never runs a VM beside its original: at most one copy is running
        runs: dict[str, list[str]] = {}
        for agent in self.agents.values():
            for vm_id, copy in agent.vms.items():
                if copy.state is VMState.RUNNING:
                    runs.setdefault(vm_id, []).append(f"{agent.node_id}@{copy.generation}")
        for vm_id, where in runs.items():
            assert len(where) == 1, f"{vm_id} runs on {where} at once"
        # never commanded to run at the same generation on another node than its record
        for node, env, _ in self.down:
            cmd = env.command
            if isinstance(cmd, c.CreateVM):
                for other in self.agents.values():
                    held = other.vms.get(cmd.vm_id)
                    if other.node_id != node and held is not None:
                        assert held.generation != cmd.generation or held.state not in (
                            VMState.RUNNING,
                            VMState.PAUSED,
                        ), f"create {cmd.vm_id}@{cmd.generation} on {node}: on {other.node_id}"
        # one active migration per VM at most, and its VM holds room on the target
        active: dict[str, str] = {}
        for mig in core.migrations.values():
            if mig.active:
                assert mig.vm_id not in active, f"{mig.vm_id} has two active migrations"
                active[mig.vm_id] = mig.id
        # capacity booked never exceeds a node's allocatable
        for node_id, node in core.nodes.items():
            booked = core.allocated(node_id)
            assert booked.memory_mib <= node.info.capacity.memory_mib, f"{node_id} overbooked"
            assert booked.vcpus <= node.info.capacity.vcpus, f"{node_id} overbooked"

    def story(self) -> str:
        head = (
            f"seed {self.seed} (reproduce: w = SimWorld({self.seed}); call w.step() and "
            f"w.check() until it fails); its last steps:\n"
        )
        return head + "\n".join(self.steps[-70:])
