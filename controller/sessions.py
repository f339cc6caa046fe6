"""The agent side of the controller: the `AgentSession.Connect` servicer, one `AgentConnection`
per stream. It turns agent messages into core events and the runner's commands into messages;
the core decides everything else (which commands are pending, their deadlines, what a
disconnect means).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import structlog
from google.protobuf.message import DecodeError

from controller.agent_input import (
    check_node_info,
    checked_progress,
    checked_vms,
    mesh_status_or_none,
    utilization_or_none,
    valid_latencies,
)
from controller.api import rpc
from controller.authz import peer_identity
from controller.core import events as ev
from controller.core.instructions import SendCommand, Welcome
from controller.enrol_api import Enrolment
from controller.runner import Runner
from shared import bounds, convert
from shared.domain import Utilization
from shared.errors import InvalidArgument, NovaCronError, PermissionDenied, Unavailable
from shared.grpc_status import status_code
from shared.identity import NodeIdentity
from shared.pb.v1 import agent_pb2 as apb
from shared.pb.v1 import agent_pb2_grpc

log = structlog.get_logger(__name__)


class AgentConnection:
    def __init__(self, node_id: str, peer: str) -> None:
        self.node_id = node_id
        self.peer = peer
        self.session_id = uuid.uuid4().hex[:12]
        self._outbox: asyncio.Queue[apb.ControllerMessage | None] = asyncio.Queue()
        self._welcome: asyncio.Future[Welcome] = asyncio.get_running_loop().create_future()
        self.closed = False
        self.reason = ""  # why it closed
        self.heartbeat_seq = 0  # the latest heartbeat received: what ConfirmContact answers

    def send_command(self, instruction: SendCommand) -> bool:
        if self.closed:
            return False
        command = convert.envelope_to_pb(instruction.envelope)
        self._outbox.put_nowait(apb.ControllerMessage(command=command))
        return True

    def send(self, message: apb.ControllerMessage) -> None:
        if not self.closed:
            self._outbox.put_nowait(message)

    def welcome(self, instruction: Welcome | None, error: NovaCronError | None) -> None:
        if self._welcome.done():
            return
        if instruction is not None:
            self._welcome.set_result(instruction)
        else:
            self._welcome.set_exception(error or NovaCronError("hello refused"))

    async def welcomed(self) -> Welcome:
        return await self._welcome

    def close(self, reason: str, *, denied: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        self.reason = reason
        if not self._welcome.done():
            error = PermissionDenied(reason) if denied else Unavailable(f"session closed: {reason}")
            self._welcome.set_exception(error)
        self._outbox.put_nowait(None)

    async def outgoing(self) -> AsyncIterator[apb.ControllerMessage]:
        while (message := await self._outbox.get()) is not None:
            yield message


def hello_fields(hello: apb.Hello) -> dict[str, object]:
    """The hello as the core's event fields, checked (agent_input): InvalidArgument names
    the field a broken or hostile agent got wrong."""
    info = convert.node_info_from_pb(hello.node)
    check_node_info(info)
    vms = checked_vms("hello.vms", (convert.vm_status_from_pb(v) for v in hello.vms))
    bounds.text("hello.mesh.public_key", hello.mesh.public_key, 64)
    bounds.text("hello.mesh.endpoint", hello.mesh.endpoint, 128)
    bounds.count("hello.images (count)", len(hello.images), 0, 1000)
    return {
        "info": info,
        "images": tuple(convert.image_from_pb(i) for i in hello.images),
        "vms": vms,
        "mesh": convert.mesh_identity_from_pb(hello.mesh) if hello.HasField("mesh") else None,
        "known_installation_id": hello.known_installation_id,
        "hypervisor_problem": hello.hypervisor_problem,
    }


NodeIdentityOf = Callable[[apb.Hello, Any], tuple[str, int]]


def node_identity_insecure(hello: apb.Hello, context: Any) -> tuple[str, int]:
    """--insecure: the node is whoever the hello says (epoch -1: nothing to check)."""
    node_id = hello.node.node_id
    if not node_id:
        raise InvalidArgument("hello.node.node_id is required")
    return node_id, -1


def node_identity_from_certificate(hello: apb.Hello, context: Any) -> tuple[str, int]:
    """Mutual TLS: the node is who its certificate says; a hello naming another is refused."""
    identity = peer_identity(context)
    if not isinstance(identity, NodeIdentity):
        raise PermissionDenied("only an enrolled node may connect")
    if hello.node.node_id != identity.node_id:
        raise PermissionDenied(
            f"the certificate is node {identity.node_id}'s; its hello says "
            f"{hello.node.node_id[:64]!r}"
        )
    return identity.node_id, identity.epoch


class AgentSessionServicer(agent_pb2_grpc.AgentSessionServicer):
    def __init__(self, runner: Runner, identity: NodeIdentityOf, enrolment: Enrolment) -> None:
        self._runner = runner
        self._identity = identity
        self._enrolment = enrolment

    @rpc
    async def Enroll(
        self,
        request: apb.EnrolRequest,
        context: grpc.aio.ServicerContext[apb.EnrolRequest, apb.EnrolResponse],
    ) -> apb.EnrolResponse:
        return await self._enrolment.enroll(request, context)

    @rpc
    async def RenewCertificate(
        self,
        request: apb.RenewRequest,
        context: grpc.aio.ServicerContext[apb.RenewRequest, apb.EnrolResponse],
    ) -> apb.EnrolResponse:
        return await self._enrolment.renew(request, context)

    async def ConfirmContact(
        self,
        request: apb.ContactQuery,
        context: grpc.aio.ServicerContext[apb.ContactQuery, apb.ContactAnswer],
    ) -> apb.ContactAnswer:
        """The latest heartbeat the named session delivered (its event is queued for the core
        already, which counts the node as heard from at its arrival, so the agent may count
        its contact from that heartbeat's send time, as it does for a pong), and whether the
        core counted this query itself as contact: answered only once it has, so the agent
        may count from the query's send time (agent/contact_check.py)."""
        conn = self._runner.session(request.session_id)
        caller = peer_identity(context)
        if isinstance(caller, NodeIdentity) and caller.node_id != request.node_id:
            return apb.ContactAnswer(heartbeat_seq=0)  # it may only ask after itself
        if conn is None or conn.closed or conn.node_id != request.node_id:
            return apb.ContactAnswer(heartbeat_seq=0)
        seq = conn.heartbeat_seq  # received before the core counts the query: both are true
        counted = await self._runner.request(
            ev.AgentContactConfirmed, node_id=conn.node_id, session_id=conn.session_id
        )
        return apb.ContactAnswer(heartbeat_seq=seq, counted=bool(counted))

    async def Connect(
        self,
        request_iterator: AsyncIterator[apb.AgentMessage],
        context: grpc.aio.ServicerContext[apb.AgentMessage, apb.ControllerMessage],
    ) -> AsyncIterator[apb.ControllerMessage]:
        try:
            first = await anext(aiter(request_iterator))
        except StopAsyncIteration:
            return
        except DecodeError:  # grpcio would answer UNKNOWN
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "the first message is not an AgentMessage"
            )
        if first.WhichOneof("body") != "hello":
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "the first message on a session must be hello"
            )
        try:
            hello = hello_fields(first.hello)
            node_id, epoch = self._identity(first.hello, context)
        except InvalidArgument as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except PermissionDenied as exc:
            claimed = first.hello.node.node_id[:64]
            await self._runner.request(
                ev.IdentityRefused, action="node.connect", target=claimed, detail=str(exc)
            )
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        conn = AgentConnection(node_id, context.peer())
        bound = log.bind(node_id=node_id, session=conn.session_id)
        bound.info("agent connected", peer=conn.peer)
        runner = self._runner
        runner.attach(conn)
        try:
            # Registered (and stored) before the welcome, so an agent that saw its welcome is
            # placeable.
            ids = {"node_id": node_id, "session_id": conn.session_id}
            runner.submit(ev.AgentHello, epoch=epoch, **ids, **hello)
            try:
                welcome = await conn.welcomed()
            except NovaCronError as exc:
                bound.warning("hello refused", error=str(exc))
                await context.abort(status_code(exc), str(exc))
            settings = runner.core.settings
            yield apb.ControllerMessage(
                welcome=apb.Welcome(
                    controller_id=settings.controller_id,
                    heartbeat_interval_ms=int(settings.heartbeat_interval * 1000),
                    probe_interval_ms=int(settings.probe_interval * 1000),
                    installation_id=welcome.installation_id,
                    take_over=welcome.take_over,
                    session_id=conn.session_id,
                )
            )
            reader = asyncio.create_task(self._read(conn, request_iterator))
            try:
                async for message in conn.outgoing():
                    yield message
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
                conn.close("disconnected")
                runner.submit(
                    ev.AgentDisconnected,
                    node_id=node_id,
                    session_id=conn.session_id,
                    reason=conn.reason or "disconnected",
                )
                bound.info("agent disconnected")
        finally:
            runner.detach(conn)

    async def _read(
        self, conn: AgentConnection, request_iterator: AsyncIterator[apb.AgentMessage]
    ) -> None:
        try:
            async for message in request_iterator:
                try:
                    self._dispatch(conn, message)
                except InvalidArgument as exc:  # out of bounds (agent_input): dropped
                    log.warning("agent message refused", node_id=conn.node_id, error=str(exc))
                except Exception:  # a bad message must not drop the node
                    log.exception("failed to handle agent message", node_id=conn.node_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a broken stream ends the session, never the controller
            log.info("session stream ended", node_id=conn.node_id, error=str(exc))
        finally:
            conn.close("disconnected")

    def _dispatch(self, conn: AgentConnection, message: apb.AgentMessage) -> None:
        kind = message.WhichOneof("body")
        ids = {"node_id": conn.node_id, "session_id": conn.session_id}
        submit = self._runner.submit
        if kind == "ping":  # first and at once: the agent is timing this
            conn.send(apb.ControllerMessage(pong=apb.Pong(seq=message.ping.seq)))
        elif kind == "heartbeat":
            hb = message.heartbeat
            conn.heartbeat_seq = max(conn.heartbeat_seq, hb.seq)
            problem = hb.hypervisor_problem
            try:
                vms = checked_vms("heartbeat.vms", map(convert.vm_status_from_pb, hb.vms))
            except InvalidArgument as exc:  # unknown, never "none" (agent_input)
                vms, problem = (), f"VM statuses refused: {exc}"
            used = utilization_or_none(convert.utilization_from_pb(hb.utilization))
            if used is None:
                log.warning("utilization out of bounds: dropped", node_id=conn.node_id)
            submit(
                ev.AgentHeartbeat,
                utilization=used or Utilization(),
                latencies=valid_latencies(convert.latency_from_pb(s) for s in hb.latencies),
                mesh=mesh_status_or_none(
                    convert.mesh_status_from_pb(hb.mesh) if hb.HasField("mesh") else None
                ),
                vms=vms,
                hypervisor_problem=problem,
                **ids,
            )
        elif kind == "result":
            submit(ev.AgentResult, result=convert.result_from_pb(message.result), **ids)
        elif kind == "vm_event":
            submit(
                ev.AgentVMStatus,
                status=convert.vm_status_from_pb(message.vm_event.vm),
                lifecycle=message.vm_event.event,
                **ids,
            )
        elif kind == "migration_progress":
            progress = checked_progress(
                convert.migration_progress_from_pb(message.migration_progress)
            )
            submit(ev.AgentProgress, progress=progress, **ids)
        else:
            log.warning("unexpected message on session", node_id=conn.node_id, kind=kind)
