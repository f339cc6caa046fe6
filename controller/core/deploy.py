"""Deploys: validate, place, record (the record is the capacity reservation), create, answer."""

from __future__ import annotations

from dataclasses import replace

from controller.core import events as ev
from controller.core.base import CoreBase
from controller.core.disconnect import min_stop_after, resolve
from controller.core.state import Join, Pending
from controller.core.targets import over_target
from controller.mesh import gateway_of
from controller.placement import BatchPlacer, Explanation
from controller.records import VMRecord
from controller.validation import validate_spec
from shared.commands import CommandResult, CreateVM
from shared.domain import DesiredState, VMSpec, VMState
from shared.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    NovaCronError,
    ResourceExhausted,
    Unavailable,
)

MAX_BATCH = 100  # VMs per DeployVMs: the planner's moves and swaps grow with its square


class DeployMixin(CoreBase):
    def explain_placement(self, spec: VMSpec, now: float, k: int = 3) -> Explanation:
        """The decision DeployVM would take now, with its explanation (no reservation)."""
        return self.engine.decide(self.state.node_table(now), self.engine.request(spec), k)

    def resolved(self, spec: VMSpec) -> VMSpec:
        """`spec` with its disconnect policy filled in from the defaults: the stored spec
        says what applies to the VM (and the agent learns its stop_after from it)."""
        policy = resolve(spec.disconnect, self.settings.failover)
        floor = min_stop_after(self.settings.heartbeat_interval)
        if policy.stops and policy.stop_after_s is not None and policy.stop_after_s < floor:
            raise InvalidArgument(
                f"disconnect.stop_after {policy.stop_after_s:g}s is too short for this "
                f"controller's {self.settings.heartbeat_interval:g}s heartbeat: a healthy node "
                f"confirms its contact only about every heartbeat, so the VM would pause "
                f"itself on a merely slow link; use at least {floor:g}s (or never)"
            )
        return replace(spec, disconnect=policy)

    def on_deploy(self, event: ev.DeployRequested) -> None:
        validate_spec(event.spec)
        spec = self.resolved(event.spec)
        timeout = event.timeout or self.settings.deploy_timeout
        if event.request_id:
            for vm in self.state.vms.values():
                if vm.request_id == event.request_id:
                    self._retry_of(vm, spec, event.stimulus_id)
                    return
        self._require_new_name(spec.name)
        self._require_image(spec.image)
        decision = self.explain_placement(spec, self._now, k=2)
        if decision.node_id is None:
            raise ResourceExhausted(decision.summary)
        vm = self._admit(spec, event.request_id, decision.node_id, decision.placement_reason())
        self.create_on_node(vm, timeout, (event.stimulus_id,))
        self.push_mesh_if_routed(vm)

    def on_deploy_many(self, event: ev.DeployManyRequested) -> None:
        """Plan several VMs together (the batch placer), admit all of them or none, then
        create them concurrently; answered once every create is answered."""
        specs = tuple(self.resolved(spec) for spec in event.specs)
        if not specs:
            raise InvalidArgument("no VMs to deploy")
        if len(specs) > MAX_BATCH:
            raise InvalidArgument(f"at most {MAX_BATCH} VMs per batch, got {len(specs)}")
        seen: set[str] = set()
        for spec in specs:
            validate_spec(spec)
            if spec.name in seen:
                raise InvalidArgument(f"VM name {spec.name!r} appears twice in the batch")
            seen.add(spec.name)
        timeout = event.timeout or self.settings.deploy_timeout
        rid = event.request_id
        keys = [f"{rid}#{i}" if rid else "" for i in range(len(specs))]
        earlier = {
            vm.request_id: vm for vm in self.state.vms.values() if rid and vm.request_id in keys
        }
        for key, spec in zip(keys, specs, strict=True):
            if key in earlier and earlier[key].spec != spec:
                raise AlreadyExists(
                    f"request_id {rid!r} was already used to deploy VM "
                    f"{earlier[key].spec.name!r} with a different spec"
                )
        todo = [i for i, key in enumerate(keys) if key not in earlier]
        for i in todo:
            self._require_new_name(specs[i].name)
            self._require_image(specs[i].image)
        table = self.state.build_node_table(self._now)  # the planner books into it
        requests = [self.engine.request(specs[i]) for i in todo]
        plan = BatchPlacer(self.engine).place(table, requests)
        if plan.placed < len(todo):
            j = plan.node_ids.index(None)
            why = self.engine.explain(self.engine.evaluate(table, requests[j]), k=0)
            raise ResourceExhausted(
                f"only {plan.placed} of {len(todo)} VMs fit together, nothing was deployed; "
                f"{specs[todo[j]].name}: {why.summary}"
            )
        nodes = len(set(plan.node_ids))
        summary = f"{len(todo)} VMs on {nodes} node{'s' if nodes != 1 else ''}"
        if plan.repaired:
            summary += f"; {plan.repaired} placed by moving another"
        if plan.improved:
            summary += f"; {plan.improved} moves/swaps raised the score"
        ids: list[str] = []
        commands: set[str] = set()
        admitted: list[VMRecord] = []
        placed = dict(zip(todo, plan.node_ids, strict=True))
        for i, key in enumerate(keys):
            if key in earlier:
                ids.append(earlier[key].id)
                continue
            node_id = placed[i]
            assert node_id is not None
            vm = self._admit(specs[i], key, node_id, f"planned as a batch: {summary}")
            admitted.append(vm)
            ids.append(vm.id)
        for vm in admitted:
            commands.add(self.create_on_node(vm, timeout, ()))
        for vm_id in ids:  # earlier ones still being created: wait for them too
            for pending in self.state.pending.values():
                if pending.vm_id == vm_id and pending.purpose == "create":
                    commands.add(pending.command_id)
        if any(vm.address for vm in admitted):
            self.push_mesh()
        join = Join(event.stimulus_id, "deploy_many", frozenset(commands), tuple(ids), "", summary)
        if commands:
            self.join(join)
        else:
            self.finish_join(join)

    def finish_join(self, join: Join) -> None:
        if join.kind == "deploy_many":
            found = [self.state.vms.get(vm_id) for vm_id in join.vm_ids]
            self.reply(join.stimulus_id, ([vm for vm in found if vm is not None], join.summary))
        elif join.kind == "rotate":
            self.reply(join.stimulus_id, self.state.nodes.get(join.node_id))

    def _retry_of(self, vm: VMRecord, spec: VMSpec, stimulus_id: str) -> None:
        if vm.spec != spec:
            raise AlreadyExists(
                f"request_id {vm.request_id!r} was already used to deploy VM {vm.spec.name!r} "
                "with a different spec"
            )
        for pending in list(self.state.pending.values()):
            if pending.vm_id == vm.id and pending.purpose == "create":
                waiting = replace(pending, waiters=(*pending.waiters, stimulus_id))
                self.journal.put(self.state.pending, pending.command_id, waiting)
                return
        if vm.state is VMState.FAILED:
            raise FailedPrecondition(
                f"VM {vm.spec.name!r} from this request failed: {vm.state_reason}; "
                "delete it before deploying again"
            )
        self.reply(stimulus_id, vm)

    def _require_new_name(self, name: str) -> None:
        if any(vm.spec.name == name for vm in self.state.vms.values()):
            raise AlreadyExists(f"a VM named {name!r} already exists")

    def _require_image(self, image: str) -> None:
        nodes = self.state.nodes.values()
        if any(i.name == image for node in nodes for i in node.images):  # stops at the first
            return
        known = {i.name for node in nodes for i in node.images}
        if image not in known:
            listing = ", ".join(sorted(known)) or "none"
            raise NotFound(f"image {image!r} not found on any node (known images: {listing})")

    def _admit(self, spec: VMSpec, request_id: str, node_id: str, reason: str) -> VMRecord:
        """Record the VM on its node at generation 1: the record is the capacity reservation."""
        vm_id = self.new_id(f"vm/{spec.name}")
        address = ""
        if self.state.nodes[node_id].mesh is not None:  # VM networking rides on the mesh
            address = f"{self.hold_address('vm', vm_id)}/32"
        record = VMRecord(
            id=vm_id,
            spec=spec,
            node_id=node_id,
            desired=DesiredState.RUNNING,
            state=VMState.PENDING,
            generation=1,
            created_at=self._now,
            updated_at=self._now,
            state_reason=f"placed on {node_id}",
            request_id=request_id,
            placement_reason=reason,
            address=address,
        )
        table = self.state.kept_table()
        self.put_vm(record)
        if table is not None and node_id in table.index:  # booked in place: stays current
            table.reserve(table.index[node_id], spec.capacity(), spec.placement.spread_group)
            self.state._table_stale = False
        self.audit("vm.deploy", record.id, f"name={spec.name} node={node_id}")
        self.log.info("vm placed", vm_id=record.id, name=spec.name, node_id=node_id)
        return record

    def placed_fields(self, vm: VMRecord) -> dict[str, object]:
        """What a node needs to host `vm`: the fields CreateVM, PrepareMigration and
        FinishMigration share."""
        return {
            "vm_id": vm.id,
            "spec": vm.spec,
            "address": vm.address,
            "gateway": gateway_of(self.settings.vm_pool) if vm.address else "",
        }

    def create_on_node(self, vm: VMRecord, timeout: float, waiters: tuple[str, ...]) -> str:
        command = CreateVM(
            vm.id,
            vm.spec,
            vm.generation,
            start_paused=vm.desired is DesiredState.PAUSED,
            address=vm.address,
            gateway=gateway_of(self.settings.vm_pool) if vm.address else "",
        )
        try:
            return self.send(
                vm.node_id,
                command,
                purpose="create",
                timeout=timeout,
                vm_id=vm.id,
                waiters=waiters,
                doing="creating",
            )
        except Unavailable as exc:
            self.set_vm_state(vm, VMState.UNKNOWN, f"{exc}; state unknown until the node reports")
            raise Unavailable(f"creating VM {vm.spec.name!r}: {exc}; its state is unknown") from exc

    def on_create_result(
        self, pending: Pending, result: CommandResult | None, lost: NovaCronError | None
    ) -> None:
        self.answer_vm_command(
            pending, result, lost, "the VM was deleted while it was being created"
        )

    def answer_vm_command(
        self,
        pending: Pending,
        result: CommandResult | None,
        lost: NovaCronError | None,
        gone: str,
    ) -> None:
        """A command about one VM was answered (or lost): record what the node said, then
        answer whoever waits with the VM or the error."""
        vm = self.state.vms.get(pending.vm_id)
        if vm is None:
            for waiter in pending.waiters:
                self.reply_error(waiter, NotFound(gone))
            return
        error = self.command_failed(vm, pending, result, lost)
        if error is None and pending.purpose == "create":
            over_target(self.log, "provision", self._now - vm.created_at, self.settings, vm=vm.id)
        if error is None and result is not None and result.vm is not None:
            vm = self.observe(vm, result.vm.state, result.vm.reason or "reported by node")
        for waiter in pending.waiters:
            if error is None:
                self.reply(waiter, vm)
            else:
                self.reply_error(waiter, error)

    def command_failed(
        self,
        vm: VMRecord,
        pending: Pending,
        result: CommandResult | None,
        lost: NovaCronError | None,
    ) -> NovaCronError | None:
        """A command about `vm` failed: record what that means, and return the error to give
        whoever waits (None if it succeeded)."""
        name, node = vm.spec.name, pending.node_id
        if lost is not None:
            self.set_vm_state(vm, VMState.UNKNOWN, f"{lost}; state unknown until the node reports")
            kind = DeadlineExceeded if isinstance(lost, DeadlineExceeded) else Unavailable
            return kind(f"{pending.doing} VM {name!r}: {lost}; its state is unknown")
        assert result is not None
        if result.error is None:
            return None
        if pending.purpose in ("create", "failover_create"):
            self.set_vm_state(vm, VMState.FAILED, result.error.message)
        return result.error.to_exception(f"node {node!r} failed {pending.doing} VM {name!r}")

    def observe(self, vm: VMRecord, state: VMState, reason: str) -> VMRecord:
        return self.set_vm_state(vm, state, reason)

    # provided by the mesh mixin
    def push_mesh_if_routed(self, vm: VMRecord) -> None:
        raise NotImplementedError

    def push_mesh(self, only: str = "") -> set[str]:
        raise NotImplementedError
