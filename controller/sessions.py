"""The agent side of the controller: one `AgentConnection` per connected agent stream.

Commands go down an outbox; results come back and resolve the caller's future by command id.
A dropped stream fails every pending command with Unavailable at once, so no caller waits for a
node that is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Protocol

import grpc
import structlog

from shared.convert import timestamp
from shared.errors import DeadlineExceeded, InvalidArgument, Unavailable
from shared.pb.v1 import agent_pb2 as apb
from shared.pb.v1 import agent_pb2_grpc

log = structlog.get_logger(__name__)


class AgentConnection:
    def __init__(self, node_id: str, peer: str) -> None:
        self.node_id = node_id
        self.peer = peer
        self.session_id = uuid.uuid4().hex[:12]
        self._outbox: asyncio.Queue[apb.ControllerMessage | None] = asyncio.Queue()
        self._pending: dict[str, asyncio.Future[apb.CommandResult]] = {}
        self.closed = False

    async def call(self, command: apb.Command, timeout: float) -> apb.CommandResult:
        """Send `command` and wait for its result; DeadlineExceeded after `timeout` seconds."""
        if self.closed:
            raise Unavailable(f"node {self.node_id!r} is not connected")
        if not command.id:
            command.id = uuid.uuid4().hex
        command.deadline.CopyFrom(timestamp(time.time() + timeout))
        future: asyncio.Future[apb.CommandResult] = asyncio.get_running_loop().create_future()
        self._pending[command.id] = future
        self._outbox.put_nowait(apb.ControllerMessage(command=command))
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise DeadlineExceeded(
                f"node {self.node_id!r} did not answer command {command.WhichOneof('action')} "
                f"within {timeout:g}s"
            ) from None
        finally:
            self._pending.pop(command.id, None)

    def resolve(self, result: apb.CommandResult) -> None:
        future = self._pending.get(result.command_id)
        if future is not None and not future.done():
            future.set_result(result)

    def send(self, message: apb.ControllerMessage) -> None:
        if not self.closed:
            self._outbox.put_nowait(message)

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        for future in self._pending.values():
            if not future.done():
                future.set_exception(Unavailable(f"node {self.node_id!r} {reason}"))
        self._outbox.put_nowait(None)

    async def outgoing(self) -> AsyncIterator[apb.ControllerMessage]:
        while (message := await self._outbox.get()) is not None:
            yield message


class SessionHandler(Protocol):
    """What the controller core does with a session's traffic."""

    heartbeat_interval: float
    probe_interval: float
    controller_id: str

    async def on_hello(self, conn: AgentConnection, hello: apb.Hello) -> None: ...
    async def on_heartbeat(self, conn: AgentConnection, heartbeat: apb.Heartbeat) -> None: ...
    async def on_vm_event(self, conn: AgentConnection, event: apb.VMEvent) -> None: ...
    async def on_disconnect(self, conn: AgentConnection) -> None: ...


class AgentSessionServicer(agent_pb2_grpc.AgentSessionServicer):
    def __init__(self, handler: SessionHandler, identity: Callable[[apb.Hello], str]) -> None:
        self._handler = handler
        self._identity = identity

    async def Connect(
        self,
        request_iterator: AsyncIterator[apb.AgentMessage],
        context: grpc.aio.ServicerContext[apb.AgentMessage, apb.ControllerMessage],
    ) -> AsyncIterator[apb.ControllerMessage]:
        try:
            first = await anext(aiter(request_iterator))
        except StopAsyncIteration:
            return
        if first.WhichOneof("body") != "hello":
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "the first message on a session must be hello"
            )
        try:
            node_id = self._identity(first.hello)
        except InvalidArgument as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        conn = AgentConnection(node_id, context.peer())
        bound = log.bind(node_id=node_id, session=conn.session_id)
        bound.info("agent connected", peer=conn.peer)
        # Registered before the welcome, so an agent that saw its welcome is placeable.
        await self._handler.on_hello(conn, first.hello)
        yield apb.ControllerMessage(
            welcome=apb.Welcome(
                controller_id=self._handler.controller_id,
                heartbeat_interval_ms=int(self._handler.heartbeat_interval * 1000),
                probe_interval_ms=int(self._handler.probe_interval * 1000),
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
            await self._handler.on_disconnect(conn)
            bound.info("agent disconnected")

    async def _read(
        self, conn: AgentConnection, request_iterator: AsyncIterator[apb.AgentMessage]
    ) -> None:
        try:
            async for message in request_iterator:
                try:
                    await self._dispatch(conn, message)
                except Exception:  # a bug handling one message must not drop the node
                    log.exception("failed to handle agent message", node_id=conn.node_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a broken stream ends the session, never the controller
            log.info("session stream ended", node_id=conn.node_id, error=str(exc))
        finally:
            conn.close("disconnected")

    async def _dispatch(self, conn: AgentConnection, message: apb.AgentMessage) -> None:
        kind = message.WhichOneof("body")
        if kind == "ping":  # first and at once: the agent is timing this
            conn.send(apb.ControllerMessage(pong=apb.Pong(seq=message.ping.seq)))
        elif kind == "heartbeat":
            await self._handler.on_heartbeat(conn, message.heartbeat)
        elif kind == "result":
            conn.resolve(message.result)
        elif kind == "vm_event":
            await self._handler.on_vm_event(conn, message.vm_event)
        else:
            log.warning("unexpected message on session", node_id=conn.node_id, kind=kind)
