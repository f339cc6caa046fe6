"""Post-copy recovery: a post-copy whose path breaks is paused cleanly, then resumed
(libvirt's VIR_MIGRATE_POSTCOPY_RESUME) once the path is back.

Once a post-copy began, neither end holds the whole guest, so a broken move cannot be undone,
only finished. Two things make it finishable:

- **A clean pause.** A path that drops packets (rather than resetting the connection) leaves
  QEMU's socket waiting for minutes of TCP retries, the guest frozen on its missing pages. A
  watcher sees the job's memory stop moving and pauses it (`abortJobFlags(POSTCOPY)`, QEMU's
  migrate-pause): both halves go to QEMU's postcopy-paused, the state a resume starts from.
- **Retried resumes.** Every RETRY_S the job is resumed with the original flags and
  parameters, until it completes or the window ends.

Under TCG the destination's QEMU can stop answering its monitor while its half is paused
(seen: its query-migrate unanswered for minutes; probably a thread that holds QEMU's main lock
waits on a page still at the source). libvirt's resume then waits for it without end. QEMU's
remedy is an out-of-band migrate-recover, which libvirt 9.0 does not use. So a try that
libvirt does not answer within the window is left behind, and the move is reported failed
(docs/migration.md, "Post-copy recovery").
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import libvirt
import structlog

from agent.hypervisor.job_watch import beside
from agent.hypervisor.libvirt_connection import _error_code

log = structlog.get_logger(__name__)

STALL_S = 5.0  # no memory moved for this long after the switch: the path is taken as broken
STALL_POLL_S = 0.5
RETRY_S = 2.0
WINDOW_WITHOUT_BUDGET_S = 300.0  # a move with no time budget: how long the path may stay down


@dataclass(slots=True)
class PostcopyWatch:
    """A post-copy job's state: whether it went post-copy (set once the switch was asked for:
    from then on a failure cannot be rolled back), and how many times the stall watcher
    paused it."""

    switched: threading.Event = field(default_factory=threading.Event)
    pauses: int = 0


@contextmanager
def pause_when_stalled(
    dom: libvirt.virDomain, vm_id: str, watch: PostcopyWatch, stall_s: float = STALL_S
) -> Iterator[None]:
    """While the body runs the post-copy job (and its resumes): once `watch.switched` is set,
    pause the job whenever its memory has not moved for `stall_s`."""
    done = threading.Event()

    def work() -> None:
        last = -1
        since = time.monotonic()
        while not done.wait(STALL_POLL_S):
            if not watch.switched.is_set():
                since = time.monotonic()
                continue
            try:
                moved = int(dom.jobStats(0).get("memory_processed", 0))
            except libvirt.libvirtError:
                continue  # between a failed job and its resume
            now = time.monotonic()
            if moved != last:
                last, since = moved, now
                continue
            if now - since < stall_s:
                continue
            since = now
            try:
                dom.abortJobFlags(libvirt.VIR_DOMAIN_ABORT_JOB_POSTCOPY)
            except libvirt.libvirtError as err:  # already paused, or not post-copy
                log.debug("postcopy_pause_skipped", vm_id=vm_id, error=str(err))
                continue
            watch.pauses += 1
            log.warning("vm_postcopy_paused", vm_id=vm_id, stalled_s=stall_s, memory=moved)

    with beside(work, done, f"postcopy-stall-{vm_id}"):
        yield


def resume_postcopy(
    dom: libvirt.virDomain,
    vm_id: str,
    uri: str,
    params: dict[str, str | int],
    flags: int,
    window_s: float,
) -> str:
    """Resume a failed post-copy until it completes or `window_s` ends. "" once the guest is
    whole on the target, else why not. Each try runs in a thread of its own, so that a try
    libvirt never answers (see the module's docstring) cannot hold the caller past its
    window; such a try is left running, and if it completes later the guest leaves this node
    like any migrated guest (its events say so)."""
    resume = flags | libvirt.VIR_MIGRATE_POSTCOPY | libvirt.VIR_MIGRATE_POSTCOPY_RESUME
    deadline = time.monotonic() + window_s
    why = "no time was left to try"
    tries = 0
    while time.monotonic() + RETRY_S < deadline:
        time.sleep(RETRY_S)
        tries += 1
        log.info("vm_postcopy_resuming", vm_id=vm_id, tries=tries)
        attempt = _ResumeTry(dom, uri, params, resume)
        if not attempt.done.wait(max(0.0, deadline - time.monotonic())):
            log.warning("vm_postcopy_resume_unanswered", vm_id=vm_id, tries=tries)
            return (
                f"try {tries} is still unanswered by libvirt (left running: if it completes, "
                "the vm is reported on the target)"
            )
        if attempt.error is None:
            log.info("vm_postcopy_resumed", vm_id=vm_id, tries=tries)
            return ""
        why = str(attempt.error.get_error_message() or attempt.error)
        log.info("vm_postcopy_resume_failed", vm_id=vm_id, tries=tries, error=why)
        if _target_lost_its_half(attempt.error):
            return f"the target lost its half ({why})"  # nothing left to resume
    return why


def _target_lost_its_half(err: libvirt.libvirtError) -> bool:
    """Whether the target has no incoming half to resume (its QEMU died, or the domain is
    gone): libvirt says so only in words ("... is not processing incoming migration")."""
    if _error_code(err) == libvirt.VIR_ERR_NO_DOMAIN:
        return True
    return "not processing incoming migration" in str(err.get_error_message() or err)


class _ResumeTry:
    """One resume call, in a daemon thread: `done` is set when libvirt answered."""

    def __init__(
        self, dom: libvirt.virDomain, uri: str, params: dict[str, str | int], flags: int
    ) -> None:
        self.done = threading.Event()
        self.error: libvirt.libvirtError | None = None
        self._call = (dom, uri, params, flags)
        threading.Thread(target=self._run, name="postcopy-resume", daemon=True).start()

    def _run(self) -> None:
        dom, uri, params, flags = self._call
        try:
            dom.migrateToURI3(uri, params, flags)
        except libvirt.libvirtError as err:
            self.error = err
        finally:
            self.done.set()
