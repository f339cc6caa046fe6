"""The second path that confirms an agent's contact (agent/contact_check.py), with a real
controller and agent in-process: when the stream's pongs stop (as when its controller-to-agent
half stalls on a lossy link), ConfirmContact on a connection of its own keeps the contact
fresh, so no VM self-fences for nothing; and the controller confirms only the node's own
current session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.contact_check import CONFIRM_AFTER_HEARTBEATS, Answer, ask
from controller.sessions import AgentConnection, AgentSessionServicer
from shared.domain import NodeCondition
from shared.pb.v1 import agent_pb2 as apb
from tests.integration.harness import Cluster, eventually, free_port, make_fake_kernel_images


@pytest.fixture
def images(tmp_path: Path) -> Path:
    return make_fake_kernel_images(tmp_path / "images")


async def test_without_pongs_the_contact_is_confirmed_on_a_second_connection(
    cluster: Cluster, images: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = await cluster.start_agent("edge-c", cluster.test_uri("edge-c"), images)
    contact = agent.session.contact
    dispatch = AgentSessionServicer._dispatch

    def without_pongs(self: AgentSessionServicer, conn: AgentConnection, message: Any) -> None:
        if message.WhichOneof("body") != "ping":  # the stream's pongs stop coming
            dispatch(self, conn, message)

    monkeypatch.setattr(AgentSessionServicer, "_dispatch", without_pongs)
    interval = cluster.heartbeat_interval
    quiet_from = contact.now() + 1.0  # a pong already on its way may still confirm up to here
    beyond_pongs = quiet_from + (CONFIRM_AFTER_HEARTBEATS + 1) * interval

    async def confirmed_since() -> bool:
        return contact.confirmed_at > beyond_pongs

    await eventually(confirmed_since, 30, "a contact confirmed after the pongs stopped")
    assert contact.alone_s() < (CONFIRM_AFTER_HEARTBEATS + 3) * interval


async def test_the_controller_confirms_only_the_nodes_own_current_session(
    cluster: Cluster, images: Path
) -> None:
    await cluster.start_agent("edge-d", cluster.test_uri("edge-d"), images)
    assert cluster.server is not None and cluster.server.controller is not None
    sessions = cluster.server.controller._sessions.values()  # the runner's live sessions
    session_ids = [s.session_id for s in sessions if s.node_id == "edge-d"]
    assert len(session_ids) == 1
    own = apb.ContactQuery(node_id="edge-d", session_id=session_ids[0])

    async def heard_a_beat() -> bool:
        answer = await ask(cluster.address, None, own, timeout_s=5)
        return answer.heartbeat_seq > 0 and answer.counted

    await eventually(heard_a_beat, 20, "ConfirmContact to name a received heartbeat")
    other_node = apb.ContactQuery(node_id="edge-x", session_id=session_ids[0])
    unknown_session = apb.ContactQuery(node_id="edge-d", session_id="not-a-session")
    assert await ask(cluster.address, None, other_node, timeout_s=5) == Answer()
    assert await ask(cluster.address, None, unknown_session, timeout_s=5) == Answer()


async def test_an_unreachable_controller_is_no_answer() -> None:
    query = apb.ContactQuery(node_id="edge-d", session_id="s")
    assert await ask(f"127.0.0.1:{free_port()}", None, query, timeout_s=1) == Answer()


async def test_with_heartbeats_stuck_too_the_query_itself_is_the_contact(
    cluster: Cluster, images: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both halves of the session stall (a 30 % loss link): no pong reaches the agent and no
    heartbeat the controller. The controller counts each ConfirmContact as contact (the node
    stays ready) and says so, so the agent counts from the query's send time, not from the
    last heartbeat that got through."""
    agent = await cluster.start_agent("edge-h", cluster.test_uri("edge-h"), images)
    contact = agent.session.contact
    dispatch = AgentSessionServicer._dispatch

    def stalled(self: AgentSessionServicer, conn: AgentConnection, message: Any) -> None:
        if message.WhichOneof("body") not in ("ping", "heartbeat"):
            dispatch(self, conn, message)

    monkeypatch.setattr(AgentSessionServicer, "_dispatch", stalled)
    interval = cluster.heartbeat_interval
    beyond_beats = contact.now() + 1.0 + (CONFIRM_AFTER_HEARTBEATS + 1) * interval

    async def confirmed_since() -> bool:
        return contact.confirmed_at > beyond_beats

    await eventually(confirmed_since, 30, "a contact confirmed with no heartbeat arriving")
    assert cluster.server is not None and cluster.server.controller is not None
    state = cluster.server.controller.core.state
    node = state.nodes["edge-h"]
    condition, why = state.condition(node, cluster.server.controller.clock())
    assert condition is not NodeCondition.LOST, why  # without the counted queries: lost
    assert "edge-h" not in state.lost_at
