"""One line on stderr when kernel compilation keeps a first run waiting for more than a second.

On a board a cold first run can compile for tens of seconds; without a word it looks like a hang. Numba
emits a ``numba:compile`` event around every compilation: :func:`install` listens, and when compiling has
gone on for :data:`DELAY` seconds it says so once per process, pointing at ``edgedl warmup``, then (on a
terminal) keeps a count of compiled kernels on that line. Runs served from the cache print nothing.
``EDGEDL_QUIET_COMPILE=1`` silences it (``edgedl warmup``'s workers set it: they report progress themselves).
"""
from __future__ import annotations

import sys
import threading

#: seconds of compiling before the notice appears
DELAY = 1.0

_installed = False


class _Notice:
    def __init__(self, stream=None, delay: float = DELAY):
        self.stream = stream
        self.delay = delay
        self.depth = 0
        self.done = 0
        self.shown = False
        self.timer: threading.Timer | None = None
        self.closer: threading.Timer | None = None  # ends the terminal's progress line once compiling pauses
        self.lock = threading.Lock()

    def _out(self):
        return self.stream if self.stream is not None else sys.stderr

    def _show(self) -> None:
        if _silenced():
            return
        with self.lock:
            if self.shown or self.depth == 0:
                return
            self.shown = True
        out = self._out()
        out.write("edgedl: compiling kernels for this CPU (first use; later processes load them from the cache; "
                  "`edgedl warmup MODEL` compiles them ahead of time)...")
        out.write("\n" if not _isatty(out) else "")
        out.flush()

    def _close_line(self) -> None:
        with self.lock:
            if self.depth or self.closer is None:
                return
            self.closer = None
        self._out().write("\n")
        self._out().flush()

    def start(self) -> None:
        with self.lock:
            if self.closer is not None:
                self.closer.cancel()
                self.closer = None
            self.depth += 1
            if self.depth == 1 and not self.shown and self.timer is None:
                self.timer = threading.Timer(self.delay, self._show)
                self.timer.daemon = True
                self.timer.start()

    def end(self) -> None:
        with self.lock:
            self.depth -= 1
            if self.depth > 0:
                return
            self.done += 1
            if self.timer is not None and not self.shown:
                self.timer.cancel()
                self.timer = None
            shown = self.shown
        out = self._out()
        if shown and _isatty(out):
            out.write(f"\redgedl: compiling kernels for this CPU: {self.done} compiled so far "
                      "(`edgedl warmup MODEL` compiles them ahead of time)   ")
            out.flush()
            with self.lock:
                if self.depth == 0 and self.closer is None:
                    self.closer = threading.Timer(0.5, self._close_line)
                    self.closer.daemon = True
                    self.closer.start()


def _silenced() -> bool:
    from ..threads import env_flag

    return env_flag("EDGEDL_QUIET_COMPILE", False)


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def install(stream=None, delay: float = DELAY) -> _Notice | None:
    """Listen to Numba's compile events (once per process; ``EDGEDL_QUIET_COMPILE`` is read when a notice is
    due). Returns the notice, or None if already installed."""
    global _installed
    if _installed:
        return None
    try:
        from numba.core import event
    except ImportError:
        return None
    notice = _Notice(stream, delay)

    class Listener(event.Listener):
        def on_start(self, ev):
            notice.start()

        def on_end(self, ev):
            notice.end()

    event.register("numba:compile", Listener())
    _installed = True
    return notice
