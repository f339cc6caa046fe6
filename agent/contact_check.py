"""A second path to confirm contact with the controller, for when pongs stop coming.

On a very lossy link the controller-to-agent half of the session's one TCP connection can
stall in retransmission backoff (0.2, 0.4 … 25.6 s) while heartbeats still arrive: the
controller keeps hearing the node, but no pong reaches the agent, and after `stop_after` the
agent pauses its VMs for nothing (once in 10 minutes at 30 % loss, docs/failover.md). So once
no contact was confirmed for CONFIRM_AFTER_HEARTBEATS intervals, the agent asks the controller
on a connection of its own, which starts with a fresh retransmission timer:
ConfirmContact answers with the latest heartbeat of this session the controller received, and
that heartbeat's send time is the confirmed contact (agent/contact.py), as with a pong.

When the other half stalls too, that heartbeat is old. So the controller also counts the query
itself as contact, and answers only once it has (`counted`): then the query's send time is the
confirmed contact, since the controller's "last heard" is no earlier than its arrival.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from typing import Protocol

import grpc
import structlog

from agent.config import AgentConfig
from agent.contact import ControllerContact
from agent.credentials import NodeCredentials, open_channel
from shared.pb.v1 import agent_pb2 as apb
from shared.pb.v1 import agent_pb2_grpc

log = structlog.get_logger(__name__)

CONFIRM_AFTER_HEARTBEATS = 2.0  # pongs normally confirm every beat within a second
TRIES_AT_ONCE = 3
# a channel of its own, not one sharing the session's connection from gRPC's global pool
CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]


class Session(Protocol):
    """What the check needs of the agent's session (agent.session.AgentSession)."""

    config: AgentConfig
    contact: ControllerContact
    heartbeat_interval: float
    credentials: NodeCredentials | None  # None: --insecure


async def confirm_when_quiet(session: Session, session_id: str) -> None:
    """Until cancelled (the session's end): whenever the contact is older than
    CONFIRM_AFTER_HEARTBEATS heartbeat intervals, ask on a fresh connection. A try starts
    every interval and may take two, so on a lossy link up to TRIES_AT_ONCE overlap (a TCP
    handshake that lost its SYN retransmits it only after a second)."""
    query = apb.ContactQuery(node_id=session.config.node_id, session_id=session_id)
    contact = session.contact
    tries: set[asyncio.Task[Answer]] = set()

    def answered(task: asyncio.Task[Answer], sent_at: float) -> None:
        tries.discard(task)
        if task.cancelled() or task.exception() is not None:
            return
        answer = task.result()
        if answer.counted:
            contact.query_counted(sent_at)
        if answer.heartbeat_seq:
            contact.heartbeat_heard(answer.heartbeat_seq)
        if answer.counted or answer.heartbeat_seq:
            log.info(
                "contact confirmed on a second connection",
                heartbeat_seq=answer.heartbeat_seq,
                query_counted=answer.counted,
            )

    try:
        while True:
            await asyncio.sleep(session.heartbeat_interval)
            quiet = contact.alone_s() >= CONFIRM_AFTER_HEARTBEATS * session.heartbeat_interval
            if not quiet or len(tries) >= TRIES_AT_ONCE:
                continue
            timeout = 2 * session.heartbeat_interval
            sent_at = contact.now()
            asking = ask(session.config.controller, session.credentials, query, timeout)
            task = asyncio.create_task(asking)
            tries.add(task)
            task.add_done_callback(functools.partial(answered, sent_at=sent_at))
    finally:
        for task in list(tries):
            task.cancel()


@dataclass(frozen=True, slots=True)
class Answer:
    heartbeat_seq: int = 0  # the latest heartbeat of the session it received (0: none)
    counted: bool = False  # it counted the query itself as contact


async def ask(
    controller: str,
    credentials: NodeCredentials | None,
    query: apb.ContactQuery,
    timeout_s: float,
) -> Answer:
    """The controller's answer (nothing confirmed when it has none, or the try failed)."""
    try:
        async with open_channel(controller, credentials, CHANNEL_OPTIONS) as channel:
            stub = agent_pb2_grpc.AgentSessionStub(channel)
            answer = await stub.ConfirmContact(query, timeout=timeout_s)
    except grpc.aio.AioRpcError as err:
        log.debug("contact check failed", code=err.code().name, details=err.details() or "")
        return Answer()
    return Answer(int(answer.heartbeat_seq), bool(answer.counted))
