"""Stopping `egox replay` by a signal: SIGTERM, SIGINT or SIGHUP becomes a ReplayInterrupted raised in the main
thread (``raise_interrupted``, the replay's handler), so every cleanup runs; ``interrupts_held`` puts it off to the
end of a block that must not be cut in the middle."""
from __future__ import annotations

import signal
from contextlib import contextmanager


class ReplayInterrupted(BaseException):
    """SIGTERM, SIGINT or SIGHUP reached the replay (raised from its signal handler, so every cleanup runs)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_HOLD = {"depth": 0, "pending": None}     # interrupts_held(): how deep, and a signal that arrived inside


def raise_interrupted(signum, _frame):
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):   # a second signal must not cut the cleanup short
        signal.signal(s, signal.SIG_IGN)
    if _HOLD["depth"]:
        _HOLD["pending"] = signum               # raised when the hold ends
        return
    raise ReplayInterrupted(signum)


@contextmanager
def interrupts_held():
    """A stop signal that arrives inside is raised (as ReplayInterrupted) when the block ends, not in the middle of
    it: raised inside a third-party constructor (tqdm's) it would leave a half-built object whose ``__del__``
    prints a traceback when the replay exits."""
    _HOLD["depth"] += 1
    try:
        yield
    finally:
        _HOLD["depth"] -= 1
        if not _HOLD["depth"] and _HOLD["pending"] is not None:
            signum, _HOLD["pending"] = _HOLD["pending"], None
            raise ReplayInterrupted(signum)
