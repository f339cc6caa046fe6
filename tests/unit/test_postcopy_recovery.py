"""The post-copy recovery's control flow, with a scripted domain in place of libvirt's: the
resume is retried until it completes, gives up at once when the target has nothing left to
resume, never holds its caller past the window, and the stall watcher pauses a job whose
memory stopped moving (and only then). The real thing runs in
tests/contract/test_postcopy_recovery.py."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import libvirt
import pytest

from agent.hypervisor import postcopy_recovery
from agent.hypervisor.postcopy_recovery import PostcopyWatch, pause_when_stalled, resume_postcopy

URI = "qemu+tcp://10.0.0.2/system"


def _libvirt_error(message: str, code: int = libvirt.VIR_ERR_OPERATION_FAILED) -> Any:
    err = libvirt.libvirtError(message)
    err.err = (code, 0, message, 0, "", None, None, 0, 0)
    return err


class ScriptedDomain:
    """Answers each migrateToURI3 with the next of `answers` (an error to raise, or None);
    "hang" blocks until released. jobStats gives `memory` as the memory moved so far."""

    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.calls: list[int] = []
        self.release = threading.Event()
        self.memory: Iterator[int] = iter(())
        self.paused = threading.Event()

    def migrateToURI3(self, uri: str, params: dict[str, Any], flags: int) -> None:
        self.calls.append(flags)
        answer = self.answers.pop(0)
        if answer == "hang":
            self.release.wait()
        elif answer is not None:
            raise answer

    def jobStats(self, flags: int) -> dict[str, int]:
        return {"memory_processed": next(self.memory, 7)}

    def abortJobFlags(self, flags: int) -> None:
        assert flags == libvirt.VIR_DOMAIN_ABORT_JOB_POSTCOPY
        self.paused.set()


@pytest.fixture(autouse=True)
def _fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postcopy_recovery, "RETRY_S", 0.01)
    monkeypatch.setattr(postcopy_recovery, "STALL_POLL_S", 0.01)


def test_a_resume_is_retried_until_it_completes_with_the_original_flags_and_resume() -> None:
    dom = ScriptedDomain([_libvirt_error("QEMU reports migration is still running"), None])
    assert resume_postcopy(dom, "vm", URI, {}, libvirt.VIR_MIGRATE_LIVE, window_s=30) == ""
    resume = libvirt.VIR_MIGRATE_POSTCOPY | libvirt.VIR_MIGRATE_POSTCOPY_RESUME
    assert dom.calls == [libvirt.VIR_MIGRATE_LIVE | resume] * 2


@pytest.mark.parametrize(
    "error",
    [
        _libvirt_error("no domain with matching name 'x'", libvirt.VIR_ERR_NO_DOMAIN),
        _libvirt_error("domain 'x' is not processing incoming migration"),
    ],
)
def test_a_target_without_its_half_ends_the_tries_at_once(error: Any) -> None:
    dom = ScriptedDomain([error, None])
    why = resume_postcopy(dom, "vm", URI, {}, 0, window_s=30)
    assert why.startswith("the target lost its half (") and len(dom.calls) == 1


def test_the_last_error_is_the_answer_when_the_window_ends() -> None:
    dom = ScriptedDomain([_libvirt_error("unable to connect")] * 1000)
    assert resume_postcopy(dom, "vm", URI, {}, 0, window_s=0.2) == "unable to connect"
    assert len(dom.calls) >= 1


def test_an_unanswered_try_does_not_hold_the_caller_past_its_window() -> None:
    dom = ScriptedDomain(["hang"])
    try:
        why = resume_postcopy(dom, "vm", URI, {}, 0, window_s=0.3)
    finally:
        dom.release.set()
    assert why.startswith("try 1 is still unanswered by libvirt")


def test_the_watcher_pauses_a_job_whose_memory_stopped_moving() -> None:
    dom = ScriptedDomain([])
    dom.memory = iter([1, 2, 3])  # then 7 for ever: stalled
    watch = PostcopyWatch()
    watch.switched.set()
    with pause_when_stalled(dom, "vm", watch, stall_s=0.05):  # type: ignore[arg-type]
        assert dom.paused.wait(10)
    assert watch.pauses >= 1


def test_the_watcher_leaves_a_job_alone_before_the_switch() -> None:
    dom = ScriptedDomain([])
    watch = PostcopyWatch()  # pre-copy: memory not moving is not the watcher's business
    with pause_when_stalled(dom, "vm", watch, stall_s=0.0):  # type: ignore[arg-type]
        assert not dom.paused.wait(0.2)
    assert watch.pauses == 0
