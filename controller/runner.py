"""The runner: feeds events to the core one at a time and carries out its instructions.

It holds the only asyncio tasks and the only clock reads of the controller's decisions. Events
are handled strictly in order; an event's `Persist` is written (one transaction) before any of
its other instructions run, and if the write fails the core takes the event back and nothing
after the `Persist` is executed (persist, then act).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import structlog

from controller.authz import caller_actor
from controller.core import ControllerCore
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
from controller.records import MigrationRecord
from controller.store import Store
from controller.view import ControllerView
from shared.errors import NovaCronError, Unavailable

log = structlog.get_logger(__name__)

Clock = Callable[[], float]


class Session(Protocol):
    """An agent stream as the runner sees it (controller.sessions.AgentConnection)."""

    node_id: str
    session_id: str
    closed: bool
    heartbeat_seq: int  # the latest heartbeat received

    def send_command(self, instruction: SendCommand) -> bool: ...
    def close(self, reason: str, *, denied: bool = False) -> None: ...
    def welcome(self, instruction: Welcome | None, error: NovaCronError | None) -> None: ...


class MigrationFeed:
    """An async iterator of migration records as they are persisted; `close()` unsubscribes."""

    def __init__(self, watchers: set[asyncio.Queue[MigrationRecord]]) -> None:
        self._watchers = watchers
        self._queue: asyncio.Queue[MigrationRecord] = asyncio.Queue()
        watchers.add(self._queue)

    def __aiter__(self) -> AsyncIterator[MigrationRecord]:
        return self

    async def __anext__(self) -> MigrationRecord:
        return await self._queue.get()

    def close(self) -> None:
        self._watchers.discard(self._queue)


class Runner:
    def __init__(
        self,
        core: ControllerCore,
        store: Store,
        *,
        clock: Clock = time.time,
        tick_interval: float = 0.0,
    ) -> None:
        self.core = core
        self.store = store
        self.clock = clock
        self.view = ControllerView(core, clock)
        self.started_at = clock()
        # liveness and failover are judged on ticks: at most 1 s apart, so a failover due at
        # `stop_after` + margin starts within a second of it
        self.tick_interval = tick_interval or min(1.0, core.settings.heartbeat_interval)
        self._queue: asyncio.Queue[ev.Event] = asyncio.Queue()
        self._waiters: dict[str, asyncio.Future[Any]] = {}
        self._sessions: dict[str, Session] = {}  # session id -> session
        self.sessions_opened = 0
        self._timers: set[asyncio.TimerHandle] = set()
        self._watchers: set[asyncio.Queue[MigrationRecord]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        # told of every Persist once it is written (the event feed, the alerts); and the
        # error of the last write if it failed (gRPC health: the store is not writable)
        self.on_persisted: list[Callable[[Persist], None]] = []
        self.persist_error: NovaCronError | None = None

    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._loop(), name="core-loop"))
        self._tasks.append(asyncio.create_task(self._ticker(), name="core-ticks"))
        self.submit(
            ev.Started,
        )

    @property
    def alive(self) -> bool:
        """The event loop and the ticker run (gRPC health)."""
        return bool(self._tasks) and not any(task.done() for task in self._tasks)

    # ------------------------------------------------------------ events in

    def stimulus(self) -> tuple[str, float]:
        return uuid.uuid4().hex, self.clock()

    def submit(self, kind: type[ev.Event], **fields: Any) -> str:
        """Queue an event; returns its stimulus id."""
        stimulus_id, now = self.stimulus()
        self._queue.put_nowait(kind(stimulus_id=stimulus_id, now=now, **fields))
        return stimulus_id

    async def request(self, kind: type[ev.Event], **fields: Any) -> Any:
        """Queue an API request and wait for the core's reply (its value, or its error)."""
        stimulus_id, now = self.stimulus()
        fields.setdefault("actor", caller_actor())  # who, for the audit record
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters[stimulus_id] = future
        self._queue.put_nowait(kind(stimulus_id=stimulus_id, now=now, **fields))
        try:
            return await asyncio.shield(future)
        finally:
            self._waiters.pop(stimulus_id, None)

    def attach(self, session: Session) -> None:
        self._sessions[session.session_id] = session
        self.sessions_opened += 1  # metrics (agent streams)

    @property
    def open_sessions(self) -> int:
        return len(self._sessions)

    def detach(self, session: Session) -> None:
        self._sessions.pop(session.session_id, None)

    def session(self, session_id: str) -> Session | None:
        """A live session by its id (ConfirmContact names its own)."""
        return self._sessions.get(session_id)

    # ------------------------------------------------------------ the loop

    async def _loop(self) -> None:
        while True:
            event = await self._queue.get()
            try:
                await self._run(event)
            except Exception:  # a bug handling one event must not stop the controller
                log.exception(
                    "event failed", kind=type(event).__name__, stimulus_id=event.stimulus_id
                )
                future = self._waiters.get(event.stimulus_id)
                if future is not None and not future.done():
                    future.set_exception(
                        NovaCronError(f"internal error (stimulus {event.stimulus_id})")
                    )

    async def _run(self, event: ev.Event) -> None:
        instructions = self.core.handle(event)
        if instructions and isinstance(instructions[0], Persist):
            persist = instructions[0]
            try:
                await self.store.apply(persist)
            except NovaCronError as exc:
                log.error(
                    "persist failed; event taken back",
                    stimulus_id=event.stimulus_id,
                    kind=type(event).__name__,
                    error=str(exc),
                )
                self.core.rollback()
                self.persist_error = exc
                stimulus_id, now = self.stimulus()
                failed = ev.PersistFailed(stimulus_id=stimulus_id, now=now, failed=event, error=exc)
                self._welcome_refused(event, exc)
                for instruction in self.core.handle(failed):
                    self._execute(instruction)
                return
            if persist.migrations:
                self._publish(persist.migrations)
            if persist:
                self.persist_error = None
                for hook in self.on_persisted:
                    try:
                        hook(persist)
                    except Exception:  # an observer's bug must not stop the event's acts
                        log.exception("a persist observer failed", stimulus_id=event.stimulus_id)
            instructions = instructions[1:]
        for instruction in instructions:
            self._execute(instruction)

    def _execute(self, instruction: Instruction) -> None:
        if isinstance(instruction, SendCommand):
            session = self._sessions.get(instruction.session_id)
            if session is None or not session.send_command(instruction):
                self.submit(
                    ev.CommandUndeliverable,
                    node_id=instruction.node_id,
                    command_id=instruction.envelope.id,
                    reason="is not connected",
                )
        elif isinstance(instruction, Reply):
            future = self._waiters.get(instruction.to)
            if future is not None and not future.done():
                if instruction.error is not None:
                    future.set_exception(instruction.error)
                else:
                    future.set_result(instruction.value)
        elif isinstance(instruction, ArmTimer):
            self._arm(instruction)
        elif isinstance(instruction, Welcome):
            session = self._sessions.get(instruction.session_id)
            if session is not None:
                session.welcome(instruction, None)
        elif isinstance(instruction, CloseSession):
            session = self._sessions.get(instruction.session_id)
            if session is not None:
                session.close(instruction.reason, denied=instruction.denied)
        elif isinstance(instruction, Persist):  # only ever first
            raise AssertionError("a Persist after other instructions")

    def _welcome_refused(self, event: ev.Event, error: NovaCronError) -> None:
        if isinstance(event, ev.AgentHello):
            session = self._sessions.get(event.session_id)
            if session is not None:
                session.welcome(
                    None, Unavailable(f"the controller cannot store this node: {error}")
                )

    def _arm(self, timer: ArmTimer) -> None:
        loop = asyncio.get_running_loop()
        delay = max(0.0, timer.at - self.clock())

        def fire() -> None:
            self._timers.discard(handle)
            self.submit(ev.TimerFired, key=timer.key)

        handle = loop.call_later(delay, fire)
        self._timers.add(handle)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.tick_interval)
            self.submit(ev.Tick)

    # ------------------------------------------------------------ migration watchers

    def _publish(self, migrations: tuple[MigrationRecord, ...]) -> None:
        for queue in self._watchers:
            for mig in migrations:
                queue.put_nowait(mig)

    def watch_migrations(self) -> MigrationFeed:
        """Every persisted change of any migration from now on (subscribed at once)."""
        return MigrationFeed(self._watchers)

    # ------------------------------------------------------------ shutdown

    def disconnect_all(self) -> None:
        for session in list(self._sessions.values()):
            session.close("controller shutting down")

    async def close(self) -> None:
        """After the server stopped: end the loop and timers, then the store."""
        for handle in self._timers:
            handle.cancel()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for future in self._waiters.values():
            if not future.done():
                future.set_exception(Unavailable("the controller is shutting down"))
        await self.store.close()
