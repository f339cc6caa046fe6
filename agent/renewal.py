"""Certificate renewal: at 2/3 of its lifetime the agent asks for a new certificate for a
new key, over its current mTLS channel, stores it, and restarts its session on a new channel
(grpcio cannot swap a channel's client certificate in place). The VMs are not touched: a
session restart is what a network blip does, and the controller treats it as one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable

import grpc
import structlog

from agent.config import AgentConfig
from agent.credentials import NodeCredentials, new_key_and_request, save
from shared.pb.v1 import agent_pb2 as apb
from shared.pb.v1 import agent_pb2_grpc

log = structlog.get_logger(__name__)

RPC_TIMEOUT_S = 15.0
MIN_RETRY_S = 1.0


async def renew_when_due(
    credentials: NodeCredentials,
    channel: grpc.aio.Channel,
    config: AgentConfig,
    renewed: Callable[[NodeCredentials], None],
) -> None:
    """Sleep until the renewal time, then renew (retrying at a tenth of the time left)."""
    node_id, state_dir = config.node_id, config.state_dir
    stub = agent_pb2_grpc.AgentSessionStub(channel)
    await asyncio.sleep(max(0.0, _seconds_until(credentials.renew_at())))
    while True:
        key_pem, csr_pem = new_key_and_request(node_id)
        try:
            answer = await stub.RenewCertificate(
                apb.RenewRequest(csr_pem=csr_pem), timeout=RPC_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as err:
            left = _seconds_until(credentials.not_after())
            retry = max(MIN_RETRY_S, left / 10)
            log.warning(
                "certificate renewal failed",
                code=err.code().name,
                details=err.details() or "",
                expires_in_s=round(left),
                retry_s=round(retry, 1),
            )
            await asyncio.sleep(retry)
            continue
        new = NodeCredentials(answer.ca_pem or credentials.ca_pem, key_pem, answer.certificate_pem)
        await asyncio.to_thread(save, state_dir, new)
        log.info("certificate renewed", not_after=new.not_after().isoformat())
        renewed(new)
        return


def _seconds_until(when: dt.datetime) -> float:
    return (when - dt.datetime.now(dt.UTC)).total_seconds()
