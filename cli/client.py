"""Thin typed wrapper over the sync EdgeAPI stub.

It exists so every call gets a deadline and every `grpc.RpcError` becomes a `CLIError` carrying
the status code name and the server's message verbatim (the server is the authority on wording).
"""

from __future__ import annotations

from collections.abc import Iterator
from types import TracebackType
from typing import Protocol, TypeVar

import grpc
from google.protobuf.message import Message

from cli.credentials import BearerCredentials, ClientCredentials, open_channel
from cli.errors import CLIError
from cli.version import VERSION
from shared.pb.v1 import admin_pb2_grpc, edge_api_pb2_grpc, types_pb2
from shared.pb.v1 import edge_api_pb2 as api

DEFAULT_CONTROLLER = "127.0.0.1:7700"
DEFAULT_TIMEOUT = 10.0
# Deadline for DeployVM when the controller picks the wait time itself (timeout_seconds = 0).
DEFAULT_DEPLOY_WAIT = 300

_Req = TypeVar("_Req", bound=Message)
_Resp = TypeVar("_Resp", bound=Message)

# Fragments of grpc-core transport errors: an UNAVAILABLE carrying one of these never reached the
# controller, so it is reported as "cannot reach"; any other UNAVAILABLE came from the server.
_TRANSPORT_HINTS = (
    "failed to connect",
    "connection refused",
    "dns resolution failed",
    "name resolution",
    "socket closed",
    "connections to all backends failing",
    "no route to host",
    "network is unreachable",
    "handshake",
    "connection reset",
    "empty address list",
)


class MigrationStream(Protocol):
    """A WatchMigration call: iterate for records; cancel() ends it from this side."""

    def __iter__(self) -> Iterator[api.Migration]: ...

    def cancel(self) -> bool: ...


def is_transport_failure(details: str) -> bool:
    lowered = details.lower()
    return any(hint in lowered for hint in _TRANSPORT_HINTS)


def _answered(err: grpc.RpcError) -> bool:
    """The controller itself sent this error (controller.api.ANSWERED)."""
    metadata = err.trailing_metadata() if isinstance(err, grpc.Call) else None
    items: tuple[tuple[str, str | bytes], ...] = tuple(metadata or ())
    return any(item[0] == "novacron-answered" for item in items)


class EdgeClient:
    """One channel to one controller; use as a context manager so the channel is closed."""

    def __init__(
        self,
        target: str,
        timeout: float = DEFAULT_TIMEOUT,
        credentials: ClientCredentials | BearerCredentials | None = None,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self._channel = open_channel(
            target, credentials, [("grpc.primary_user_agent", f"novacron-cli/{VERSION}")]
        )
        self._stub = edge_api_pb2_grpc.EdgeAPIStub(self._channel)
        self.admin = admin_pb2_grpc.AdminAPIStub(self._channel)

    def __enter__(self) -> EdgeClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    # -- error mapping -------------------------------------------------------------------------

    def to_cli_error(self, err: grpc.RpcError, deadline: float) -> CLIError:
        """Map an RpcError to a CLIError; transport failures get a hint naming the target."""
        code = err.code() if isinstance(err, grpc.Call) else None
        details = (err.details() if isinstance(err, grpc.Call) else None) or str(err)
        name = code.name if code is not None else "UNKNOWN"
        if (
            code is grpc.StatusCode.UNAVAILABLE
            and not _answered(err)
            and is_transport_failure(details)
        ):
            return CLIError(name, f"cannot reach controller at {self.target} ({details})")
        if code is grpc.StatusCode.DEADLINE_EXCEEDED and details.lower() in (
            "deadline exceeded",
            "",
        ):
            return CLIError(
                name, f"no answer from controller at {self.target} within {deadline:g}s"
            )
        return CLIError(name, details)

    def call(
        self,
        method: grpc.UnaryUnaryMultiCallable[_Req, _Resp],
        request: _Req,
        timeout: float | None = None,
    ) -> _Resp:
        """Any unary method of this channel's stubs, with the deadline and error mapping."""
        return self._call(method, request, timeout)

    def _call(
        self,
        method: grpc.UnaryUnaryMultiCallable[_Req, _Resp],
        request: _Req,
        timeout: float | None = None,
    ) -> _Resp:
        deadline = self.timeout if timeout is None else timeout
        try:
            return method(request, timeout=deadline)
        except grpc.RpcError as err:
            raise self.to_cli_error(err, deadline) from None

    # -- RPCs ----------------------------------------------------------------------------------

    def deploy_future(
        self, request: api.DeployVMRequest
    ) -> tuple[grpc.Future[types_pb2.VM], float]:
        """Start DeployVM without blocking (so a spinner can run); returns (future, deadline).

        The deadline covers the controller's wait for the VM to run plus the normal RPC timeout.
        """
        wait = request.timeout_seconds or DEFAULT_DEPLOY_WAIT
        deadline = wait + self.timeout
        return self._stub.DeployVM.future(request, timeout=deadline), deadline

    def deploy_many_future(
        self, request: api.DeployVMsRequest
    ) -> tuple[grpc.Future[api.DeployVMsResponse], float]:
        """Start DeployVMs without blocking; returns (future, deadline) like deploy_future."""
        wait = request.timeout_seconds or DEFAULT_DEPLOY_WAIT
        deadline = wait + self.timeout
        return self._stub.DeployVMs.future(request, timeout=deadline), deadline

    def deploy_result(self, future: grpc.Future[_Resp], deadline: float) -> _Resp:
        try:
            return future.result()
        except grpc.RpcError as err:
            raise self.to_cli_error(err, deadline) from None

    def get_vm(self, name_or_id: str) -> types_pb2.VM:
        return self._call(self._stub.GetVM, api.GetVMRequest(name_or_id=name_or_id))

    def list_vms(self, node_id: str = "") -> list[types_pb2.VM]:
        resp = self._call(self._stub.ListVMs, api.ListVMsRequest(node_id=node_id))
        return list(resp.vms)

    def migrate_future(
        self, request: api.MigrateVMRequest
    ) -> tuple[grpc.Future[api.MigrateVMResponse], float]:
        """Start MigrateVM without blocking; returns (future, deadline)."""
        deadline = (request.timeout_seconds or DEFAULT_DEPLOY_WAIT) + self.timeout
        return self._stub.MigrateVM.future(request, timeout=deadline), deadline

    def delete_vm(self, name_or_id: str) -> types_pb2.VM:
        resp = self._call(self._stub.DeleteVM, api.DeleteVMRequest(name_or_id=name_or_id))
        return resp.vm

    def suspend_vm(self, name_or_id: str) -> types_pb2.VM:
        return self._call(self._stub.SuspendVM, api.VMRef(name_or_id=name_or_id))

    def resume_vm(self, name_or_id: str) -> types_pb2.VM:
        return self._call(self._stub.ResumeVM, api.VMRef(name_or_id=name_or_id))

    def vm_console(self, name_or_id: str, max_bytes: int = 0) -> api.GetVMConsoleResponse:
        req = api.GetVMConsoleRequest(name_or_id=name_or_id, max_bytes=max_bytes)
        return self._call(self._stub.GetVMConsole, req)

    def list_nodes(self) -> list[types_pb2.Node]:
        return list(self._call(self._stub.ListNodes, api.ListNodesRequest()).nodes)

    def get_node(self, node_id: str) -> types_pb2.Node:
        return self._call(self._stub.GetNode, api.GetNodeRequest(node_id=node_id))

    def status(self) -> api.Status:
        return self._call(self._stub.GetStatus, api.GetStatusRequest())

    def recommend(self, spec: types_pb2.VMSpec, k: int) -> api.PlacementDecision:
        req = api.RecommendPlacementRequest(spec=spec, k=k)
        return self._call(self._stub.RecommendPlacement, req)

    def nearest(self, latitude: float, longitude: float, n: int) -> list[api.NodeDistance]:
        loc = types_pb2.Location(latitude=latitude, longitude=longitude)
        req = api.FindNearestNodesRequest(location=loc, n=n)
        return list(self._call(self._stub.FindNearestNodes, req).nodes)

    def cordon(self, node_id: str, cordoned: bool) -> types_pb2.Node:
        req = api.CordonNodeRequest(node_id=node_id, cordoned=cordoned)
        return self._call(self._stub.CordonNode, req)

    def fail_over(self, node_id: str, node_is_dead: bool) -> api.HandleEdgeFailureResponse:
        req = api.HandleEdgeFailureRequest(node_id=node_id, node_is_dead=node_is_dead)
        return self._call(self._stub.HandleEdgeFailure, req)

    def drain(self, node_id: str, parallel: int, cold: bool = False) -> types_pb2.Node:
        request = api.DrainNodeRequest(node_id=node_id, parallel=parallel, cold=cold)
        return self._call(self._stub.DrainNode, request)

    def rotate_mesh_key(self, node_id: str) -> types_pb2.Node:
        return self._call(self._stub.RotateMeshKey, api.GetNodeRequest(node_id=node_id))

    # -- migrations and orphans ----------------------------------------------------------------

    def get_migration(self, migration_id: str = "", vm: str = "") -> api.Migration:
        req = api.GetMigrationRequest(migration_id=migration_id, vm=vm)
        return self._call(self._stub.GetMigrationStatus, req)

    def list_migrations(self, vm: str = "") -> list[api.Migration]:
        resp = self._call(self._stub.ListMigrations, api.ListMigrationsRequest(vm=vm))
        return list(resp.migrations)

    def watch_migration(
        self, vm: str = "", migration_id: str = "", timeout: float = 0
    ) -> MigrationStream:
        """Open WatchMigration; errors surface as grpc.RpcError while iterating (the caller
        decides: `vm migrate` treats any of them as "no progress to show")."""
        req = api.GetMigrationRequest(migration_id=migration_id, vm=vm)
        return self._stub.WatchMigration(req, timeout=timeout or None)

    def watch_events(
        self, request: api.WatchEventsRequest, timeout: float | None = None
    ) -> Iterator[api.ControllerEvent]:
        """Open WatchEvents (cli/events.py); grpc.RpcError surfaces while iterating."""
        return self._stub.WatchEvents(request, timeout=timeout)

    def list_orphans(self) -> list[api.Orphan]:
        return list(self._call(self._stub.ListOrphans, api.ListOrphansRequest()).orphans)

    def adopt_vm(self, node_id: str, vm: str) -> types_pb2.VM:
        return self._call(self._stub.AdoptVM, api.OrphanRef(node_id=node_id, vm=vm))

    def delete_orphan(self, node_id: str, vm: str) -> api.Orphan:
        return self._call(self._stub.DeleteOrphan, api.OrphanRef(node_id=node_id, vm=vm))
