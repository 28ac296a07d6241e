"""Stopping a training process cleanly: SIGTERM and SIGINT are recorded, and the training loop checks the record
between chunks, saves a checkpoint and marks its runs interrupted (scaling.engine). A signal is never acted on
in the middle of a write, so whatever it interrupts stays resumable.
"""

from __future__ import annotations

import signal

_RECEIVED: list[str] = []  # the stop signals this process received, oldest first


def _record(signum, frame) -> None:
    _RECEIVED.append(signal.Signals(signum).name)


def received() -> str | None:
    """The first SIGTERM or SIGINT this process received since record_signals or a training loop began."""
    return _RECEIVED[0] if _RECEIVED else None


def record_signals() -> None:
    """Record SIGTERM and SIGINT for the whole life of a training process (scaling.app): one arriving outside the
    loop (start-up, compilation) stops the run at its first chunk boundary instead of killing it mid-write."""
    for s in (signal.SIGTERM, signal.SIGINT):
        try:
            signal.signal(s, _record)
        except ValueError:  # not the main thread (some launchers): the loop's own handler is all there is
            return


class Stop:
    """SIGTERM / SIGINT as a flag that the loop checks between chunks."""

    def __init__(self):
        self._old = {}

    @property
    def signal(self) -> str | None:
        return received()

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, _record)
            except ValueError:  # not the main thread: signals cannot be caught here
                pass
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
