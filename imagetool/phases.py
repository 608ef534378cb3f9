"""ImageTransfer phases: the names, their groups and the allowed moves.

The phase names are those of the ``ImageTransferPhase`` enum of the oVirt
REST API guide. The client (waiting, keep-alive, resume) and the local
engine's state machine both read the groups and the transition table from
here, so a phase's meaning is written once.

The local engine's lifecycle: ``initializing`` -> ``transferring`` (ticket
added) -> ``finalizing_success`` -> ``finished_success``, or
``finalizing_failure`` -> ``finished_failure``; pause/resume through
``paused_user``/``paused_system`` and ``resuming``; cancel through
``cancelled_user``/``cancelled_system`` -> ``finalizing_cleanup`` ->
``finished_cleanup`` -> ``finished_failure``. Older engines report a plain
``cancelled`` that never moves again.
"""

from __future__ import annotations

from enum import Enum


class _Named(str, Enum):
    """An enum member that compares, hashes and prints as its name."""

    def __str__(self) -> str:
        return self.value


class Phase(_Named):
    """An ImageTransfer phase; compares and hashes equal to its name."""

    UNKNOWN = "unknown"
    INITIALIZING = "initializing"
    TRANSFERRING = "transferring"
    RESUMING = "resuming"
    PAUSED_USER = "paused_user"
    PAUSED_SYSTEM = "paused_system"
    CANCELLED = "cancelled"
    CANCELLED_USER = "cancelled_user"
    CANCELLED_SYSTEM = "cancelled_system"
    FINALIZING_SUCCESS = "finalizing_success"
    FINALIZING_FAILURE = "finalizing_failure"
    FINALIZING_CLEANUP = "finalizing_cleanup"
    FINISHED_SUCCESS = "finished_success"
    FINISHED_FAILURE = "finished_failure"
    FINISHED_CLEANUP = "finished_cleanup"


P = Phase

PAUSED = frozenset({P.PAUSED_USER, P.PAUSED_SYSTEM})
# A transfer in these phases holds its disk and can carry on: it may be
# extended, cancelled, or reused by a resumed upload.
ACTIVE = frozenset({P.INITIALIZING, P.TRANSFERRING, P.RESUMING}) | PAUSED
# The transfer has a data-plane ticket, so its URLs are reported.
SERVING = ACTIVE - {P.INITIALIZING}
# Final phases of the local engine: a transfer never leaves them.
FINISHED = frozenset({P.FINISHED_SUCCESS, P.FINISHED_FAILURE})
# Phases after which a transfer never moves again, on any engine.
TERMINAL = FINISHED | {P.CANCELLED}
# The transfer is over: finished, cleaned up, or cancelled on an older engine.
ENDED = TERMINAL | {P.FINISHED_CLEANUP}
# The transfer failed or is failing.
FAILURE = frozenset({P.FINISHED_FAILURE, P.FINALIZING_FAILURE,
                     P.CANCELLED, P.CANCELLED_SYSTEM, P.CANCELLED_USER,
                     P.FINALIZING_CLEANUP, P.FINISHED_CLEANUP})
# On the way to finished_failure (the disk is then unlocked, or removed when
# the transfer created it).
FAILING = FAILURE - {P.FINISHED_FAILURE}
# The copy cannot go on.
STOPPED = FAILURE | PAUSED | {P.FINISHED_SUCCESS}

class Event(_Named):
    """What moves a local engine's transfer from one phase to the next."""

    READY = "ready"                    # the ticket is served (again)
    REOPEN = "reopen"                  # resuming without a ticket: prepare anew
    USER_PAUSE = "user_pause"
    SYSTEM_PAUSE = "system_pause"      # idle, a failed preparation, a restart
    RESUME = "resume"
    FINALIZE = "finalize"
    USER_CANCEL = "user_cancel"
    SYSTEM_CANCEL = "system_cancel"    # idle, a failed preparation, a restart
    VERIFIED = "verified"
    NOT_VERIFIED = "not_verified"
    CLEANUP = "cleanup"                # the ticket closes, the disk is put back
    CLEANED = "cleaned"
    END = "end"


E = Event

_CANCEL = {E.USER_CANCEL: P.CANCELLED_USER, E.SYSTEM_CANCEL: P.CANCELLED_SYSTEM}
_LIVE = {E.SYSTEM_PAUSE: P.PAUSED_SYSTEM, **_CANCEL}

# Every move the local engine makes, by the event that makes it (the
# ``_state.py`` table of the h11 HTTP library is the model): phase ->
# {event: next phase}. Restarting the engine settles whatever it finds
# unfinished (``recover``): uploads pause, the rest is cancelled by the
# system, so every live phase has both system events. A phase with no
# entry for an event refuses it.
EVENTS: dict[Phase, dict[Event, Phase]] = {
    P.INITIALIZING: {E.READY: P.TRANSFERRING, **_LIVE},
    P.TRANSFERRING: {E.FINALIZE: P.FINALIZING_SUCCESS, E.USER_PAUSE: P.PAUSED_USER, **_LIVE},
    P.RESUMING: {E.READY: P.TRANSFERRING, E.REOPEN: P.INITIALIZING, **_LIVE},
    P.PAUSED_USER: {E.RESUME: P.RESUMING, E.FINALIZE: P.FINALIZING_SUCCESS, **_LIVE},
    P.PAUSED_SYSTEM: {E.RESUME: P.RESUMING, E.FINALIZE: P.FINALIZING_SUCCESS, **_LIVE},
    P.CANCELLED_USER: {E.CLEANUP: P.FINALIZING_CLEANUP, E.SYSTEM_CANCEL: P.CANCELLED_SYSTEM},
    P.CANCELLED_SYSTEM: {E.CLEANUP: P.FINALIZING_CLEANUP, E.SYSTEM_CANCEL: P.CANCELLED_SYSTEM},
    P.FINALIZING_SUCCESS: {E.VERIFIED: P.FINISHED_SUCCESS,
                           E.NOT_VERIFIED: P.FINALIZING_FAILURE},
    P.FINALIZING_FAILURE: {E.END: P.FINISHED_FAILURE, E.SYSTEM_CANCEL: P.CANCELLED_SYSTEM},
    P.FINALIZING_CLEANUP: {E.CLEANED: P.FINISHED_CLEANUP, E.SYSTEM_CANCEL: P.CANCELLED_SYSTEM},
    P.FINISHED_CLEANUP: {E.END: P.FINISHED_FAILURE, E.SYSTEM_CANCEL: P.CANCELLED_SYSTEM},
    P.FINISHED_SUCCESS: {},
    P.FINISHED_FAILURE: {},
}

def next_phase(old: str, event: Event) -> Phase | None:
    """The phase ``event`` moves a transfer in ``old`` to; None when ``old``
    refuses it."""
    return EVENTS.get(old, {}).get(event)


def accepting(event: Event) -> frozenset[Phase]:
    """The phases in which ``event`` may happen (an action's allowed phases)."""
    return frozenset(p for p, moves in EVENTS.items() if event in moves)


def ordered(phases: frozenset[Phase] | set[str]) -> list[Phase]:
    """``phases`` in the enum's order, for stable messages."""
    return [p for p in Phase if p in phases]


class BackupPhase(_Named):
    """A VM backup's phase (``BackupPhase`` of the oVirt REST API guide);
    compares and hashes equal to its name."""

    INITIALIZING = "initializing"
    STARTING = "starting"
    READY = "ready"
    FINALIZING = "finalizing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


B = BackupPhase

# The backup holds its VM and disks: frozen layers, a pending checkpoint.
BACKUP_RUNNING = frozenset({B.INITIALIZING, B.STARTING, B.READY, B.FINALIZING})
BACKUP_ENDED = frozenset({B.SUCCEEDED, B.FAILED})

# Every move the local engine makes. A backup ends through finalizing,
# whoever ends it: the client's finalize, the inactivity timeout, or the
# start after a crash (which may find it in any running phase, finalizing
# included, and merges again).
BACKUP_TRANSITIONS: dict[BackupPhase, frozenset[BackupPhase]] = {
    B.INITIALIZING: frozenset({B.READY, B.FINALIZING}),
    B.STARTING: frozenset({B.READY, B.FINALIZING}),
    B.READY: frozenset({B.FINALIZING}),
    B.FINALIZING: frozenset({B.SUCCEEDED, B.FAILED}),
    B.SUCCEEDED: frozenset(),
    B.FAILED: frozenset(),
}


def can_move_backup(old: str, new: str) -> bool:
    """Whether the local engine may move a backup from ``old`` to ``new``
    (staying is allowed; an unknown phase allows nothing)."""
    return old == new or new in BACKUP_TRANSITIONS.get(old, frozenset())
