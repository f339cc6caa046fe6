"""Assembles the controller's gRPC server: AgentSession, EdgeAPI, health and reflection."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from controller.admin_api import AdminAPIServicer, service_identity
from controller.alert_metrics import AlertCollector
from controller.alert_runner import AlertRunner
from controller.authz import AuthorizationInterceptor
from controller.cert_watch import CertificateWatch, WatchedIssuer, watching_identity
from controller.config import ControllerConfig, FailureDetectorConfig, enrol_listen_of
from controller.core import ControllerCore, Settings
from controller.core import events as ev
from controller.core.detector import DetectorConfig
from controller.core.disconnect import FailoverSettings
from controller.dashboard import DashboardServer
from controller.dashboard.events import event_source
from controller.enrol_api import Enrolment
from controller.event_feed import EventFeed
from controller.events_api import EdgeAPIWithEvents
from controller.health import HealthMonitor
from controller.metrics import MetricsServer
from controller.metrics_records import TimedEngine
from controller.pki import require_pki
from controller.runner import Runner
from controller.serving import ServingCredentials
from controller.sessions import (
    AgentSessionServicer,
    node_identity_from_certificate,
    node_identity_insecure,
)
from controller.store import SQLiteStore
from shared.errors import FailedPrecondition, InvalidArgument
from shared.pb.v1 import admin_pb2, admin_pb2_grpc, agent_pb2_grpc, edge_api_pb2, edge_api_pb2_grpc
from shared.pb.v1 import agent_pb2 as apb

log = structlog.get_logger(__name__)

SERVER_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    # gRPC also sets TCP_USER_TIMEOUT to this: unacknowledged data older than it ends the
    # connection. 5 s ended sessions within seconds on a 30 % loss link; whether a node
    # is lost is the failure detector's call (controller/core/detector.py), not TCP's.
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
    # gRPC's default, stated: every field has its own bound (controller/agent_input.py,
    # controller/validation.py), this caps what is read before they are checked
    ("grpc.max_receive_message_length", 4 * 1024 * 1024),
]


def detector_config(c: FailureDetectorConfig) -> DetectorConfig:
    return DetectorConfig(
        suspect_phi=c.suspect_phi,
        lost_phi=c.lost_phi,
        min_std_heartbeats=c.min_std_heartbeats,
        acceptable_pause_heartbeats=c.acceptable_pause_heartbeats,
        disconnect_lost_after_s=c.disconnect_lost_after,
        window=c.window,
    )


class ControllerServer:
    def __init__(self, config: ControllerConfig) -> None:
        self.config = config
        self.controller: Runner | None = None
        self.port = 0
        self.enrol_port = 0
        self._server: grpc.aio.Server | None = None
        self.metrics: MetricsServer | None = None
        # the event feed (novacron events, the web dashboard) and what feeds it
        self.feed = EventFeed(config.alerts.events_kept)
        self.alerts: AlertRunner | None = None
        self.health: HealthMonitor | None = None
        self.dashboard: DashboardServer | None = None

    async def start(self) -> int:
        if self.config.insecure and self.config.tls.require_tls:
            raise FailedPrecondition("require_tls is set: --insecure is refused")
        pki = None if self.config.insecure else require_pki(self.config.state_dir)
        if pki is None:
            log.warning(
                "INSECURE MODE: agents and clients are not authenticated; local development only"
            )
        store = SQLiteStore(self.config.state_dir / "controller.db")
        stored = await store.load()
        settings = Settings(
            controller_id=self.config.controller_id or f"controller-{uuid.uuid4().hex[:8]}",
            installation_id=store.installation_id,
            take_over=self.config.new_installation,
            heartbeat_interval=self.config.heartbeat_interval,
            probe_interval=self.config.probe_interval,
            command_timeout=self.config.command_timeout,
            deploy_timeout=self.config.deploy_timeout,
            cold_shutdown_timeout=self.config.cold_shutdown_timeout,
            max_downtime_ms=max(1, round(self.config.max_downtime * 1000)),
            mesh_pool=self.config.mesh_pool,
            vm_pool=self.config.vm_pool,
            detector=detector_config(self.config.failure_detector),
            failover=FailoverSettings(
                replace_after_s=self.config.failover.replace_after,
                stop_after_s=self.config.failover.stop_after,
                clock_margin_s=self.config.failover.clock_margin,
                max_per_interval=self.config.failover.max_per_interval,
                interval_s=self.config.failover.interval,
            ),
            **self.config.edge_computing.core_settings(),  # migration defaults, targets
        )
        core = ControllerCore(settings, TimedEngine(self.config.placement_profile()))
        core.load(
            stored.nodes,
            stored.vms,
            stored.migrations,
            stored.tombstones,
            now=time.time(),
            failovers=stored.failovers,
            drains=stored.drains,
            tokens=stored.tokens,
            credentials=stored.credentials,
            service_tokens=stored.service_tokens,
        )
        log.info(
            "state loaded",
            nodes=len(stored.nodes),
            vms=len(stored.vms),
            migrations=sum(1 for m in stored.migrations if m.active),
            installation_id=store.installation_id,
            new_store=store.created,
            store=store.name,
        )
        controller = Runner(core, store)
        await controller.start()

        async def audit_refusal(actor: str, method: str, why: str) -> None:
            await controller.request(
                ev.IdentityRefused, action="api.call", target=method, detail=why, actor=actor
            )

        server = grpc.aio.server(
            options=SERVER_OPTIONS,
            interceptors=[
                AuthorizationInterceptor(
                    self.config.tls,
                    enforce=pki is not None,
                    on_refused=audit_refusal,
                    bearer=lambda token: service_identity(controller.view, token),
                )
            ],
        )
        certificates = CertificateWatch(pki)
        issuer = WatchedIssuer(pki, certificates) if pki is not None else None
        lifetime = dt.timedelta(seconds=self.config.node_certificate_lifetime)
        agent_pb2_grpc.add_AgentSessionServicer_to_server(
            AgentSessionServicer(
                controller,
                watching_identity(node_identity_from_certificate, certificates)
                if pki is not None
                else node_identity_insecure,
                Enrolment(controller, issuer, lifetime),
            ),
            server,
        )
        edge_api_pb2_grpc.add_EdgeAPIServicer_to_server(
            EdgeAPIWithEvents(controller, self.feed), server
        )
        admin_pb2_grpc.add_AdminAPIServicer_to_server(
            AdminAPIServicer(controller, store, pki.pin() if pki is not None else ""), server
        )
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        services = (
            apb.DESCRIPTOR.services_by_name["AgentSession"].full_name,
            edge_api_pb2.DESCRIPTOR.services_by_name["EdgeAPI"].full_name,
            admin_pb2.DESCRIPTOR.services_by_name["AdminAPI"].full_name,
            health.SERVICE_NAME,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(services, server)
        if pki is None:
            self.port = server.add_insecure_port(self.config.listen)
        else:
            # the serving certificate with the CA after it (a joining agent checks the CA's
            # pin from the chain); reloaded when rotated (controller/serving.py)
            mtls = ServingCredentials(pki, client_auth=True)
            self.port = server.add_secure_port(self.config.listen, mtls.credentials())
            enrol = enrol_listen_of(self.config)
            join = ServingCredentials(pki, client_auth=False)
            self.enrol_port = server.add_secure_port(enrol, join.credentials())
            if self.enrol_port == 0:
                raise InvalidArgument(f"cannot listen on {enrol} (enrol_listen)")
        if self.port == 0:
            raise InvalidArgument(f"cannot listen on {self.config.listen}")
        for name in ("", *services[:3]):  # SERVING once the first check passes
            await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await server.start()
        alerts = AlertRunner(
            controller.view, self.feed, self.config.alerts, certificates, controller.clock
        )
        controller.on_persisted.append(alerts.persisted)
        alerts.start()
        self.alerts = alerts
        self.health = HealthMonitor(
            health_servicer,
            ("", *services[:3]),
            controller,
            store.probe,
            self.config.alerts.health_probe_interval,
            self.feed,
        )
        await self.health.check()
        self.health.start()
        self._server = server
        self.controller = controller
        if self.config.metrics_listen:
            self.metrics = MetricsServer(controller, self.config.metrics_listen)
            self.metrics.registry.register(AlertCollector(alerts))
            log.info("metrics on /metrics", port=self.metrics.port)
        if self.config.dashboard_listen:
            self.dashboard = DashboardServer(
                controller.view,
                event_source(store, self.feed),
                self.config.dashboard_listen,
                asyncio.get_running_loop(),
                pki=pki,
                verify=lambda token: service_identity(controller.view, token),
                tls_policy=self.config.tls,
            )
            log.info("dashboard", url=self.dashboard.url)
        log.info(
            "controller listening",
            listen=self.config.listen,
            port=self.port,
            enrol_port=self.enrol_port or None,
            tls=pki is not None,
            state_dir=str(self.config.state_dir),
            controller_id=settings.controller_id,
        )
        return self.port

    @property
    def address(self) -> str:
        host = self.config.listen.rpartition(":")[0]
        return f"{host}:{self.port}"

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()

    async def stop(self, grace: float = 3.0) -> None:
        if self.health is not None:  # NOT_SERVING from the first moment of the shutdown
            await self.health.stop()
            self.health = None
        if self.alerts is not None:
            await self.alerts.stop()
            self.alerts = None
        if self.dashboard is not None:
            await asyncio.to_thread(self.dashboard.stop)
            self.dashboard = None
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.stop)
            self.metrics = None
        if self.controller is not None:
            self.controller.disconnect_all()
        if self._server is not None:
            await self._server.stop(grace)
        if self.controller is not None:
            await self.controller.close()
        log.info("controller stopped")
