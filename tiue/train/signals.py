"""SIGTERM / SIGINT become a request to checkpoint and stop at the next step boundary."""

from __future__ import annotations

import signal
import threading

__all__ = ["StopRequest"]


class StopRequest:
    """Context manager: while active, SIGTERM and SIGINT set `requested` instead of killing.

    A second SIGINT falls through to the previous handler, so Ctrl-C twice still interrupts.
    Handlers can only be installed from the main thread; elsewhere this is a no-op flag.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            previous = self._previous.get(signum)
            if callable(previous):
                previous(signum, frame)
                return
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()
        return False
