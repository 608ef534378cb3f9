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

_CANCEL = frozenset({P.CANCELLED_USER, P.CANCELLED_SYSTEM})

# Every move the local engine makes. Restarting the engine settles whatever
# it finds unfinished (``recover``): uploads pause, the rest is cancelled by
# the system, so every live phase may move to paused_system or
# cancelled_system.
TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    P.INITIALIZING: frozenset({P.TRANSFERRING, P.PAUSED_SYSTEM}) | _CANCEL,
    P.TRANSFERRING: frozenset({P.FINALIZING_SUCCESS}) | PAUSED | _CANCEL,
    P.RESUMING: frozenset({P.TRANSFERRING, P.INITIALIZING, P.PAUSED_SYSTEM}) | _CANCEL,
    P.PAUSED_USER: frozenset({P.RESUMING, P.FINALIZING_SUCCESS, P.PAUSED_SYSTEM}) | _CANCEL,
    P.PAUSED_SYSTEM: frozenset({P.RESUMING, P.FINALIZING_SUCCESS}) | _CANCEL,
    P.CANCELLED_USER: frozenset({P.FINALIZING_CLEANUP, P.CANCELLED_SYSTEM}),
    P.CANCELLED_SYSTEM: frozenset({P.FINALIZING_CLEANUP}),
    P.FINALIZING_SUCCESS: frozenset({P.FINISHED_SUCCESS, P.FINALIZING_FAILURE}),
    P.FINALIZING_FAILURE: frozenset({P.FINISHED_FAILURE, P.CANCELLED_SYSTEM}),
    P.FINALIZING_CLEANUP: frozenset({P.FINISHED_CLEANUP, P.CANCELLED_SYSTEM}),
    P.FINISHED_CLEANUP: frozenset({P.FINISHED_FAILURE, P.CANCELLED_SYSTEM}),
    P.FINISHED_SUCCESS: frozenset(),
    P.FINISHED_FAILURE: frozenset(),
}


def can_transition(old: str, new: str) -> bool:
    """Whether the local engine may move a transfer from ``old`` to ``new``.

    Staying in a phase is always allowed (fields other than the phase
    change); an unknown phase allows nothing.
    """
    return _allowed(TRANSITIONS, old, new)


def _allowed(table: dict, old: str, new: str) -> bool:
    return old == new or new in table.get(old, frozenset())


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
    return _allowed(BACKUP_TRANSITIONS, old, new)
