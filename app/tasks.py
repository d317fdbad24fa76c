"""One-off background jobs (COCO import and export) off the GUI thread.

A job is a plain function; its return value reaches ``done`` and its exception reaches ``failed``
on the GUI thread (superqt's worker shape: a runnable paired with a QObject of signals).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal, Slot


class _Signals(QObject):
    done = Signal(object)
    failed = Signal(object)  # the exception
    partial = Signal(object)  # what the job hands over while it runs


class _Job(QRunnable):
    def __init__(self, fn: Callable[[], Any], signals: _Signals):
        super().__init__()
        self.fn, self.signals = fn, signals

    @Slot()
    def run(self) -> None:
        try:
            result = self.fn()
        except Exception as exc:  # reported, never a silent thread death
            self.signals.failed.emit(exc)
        else:
            self.signals.done.emit(result)


class Jobs(QObject):
    """``start(fn, done, failed)``; ``running`` says whether a job is still going."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(1)  # one import or export at a time, in order
        self._signals: list[_Signals] = []

    @property
    def running(self) -> bool:
        return self.pool.activeThreadCount() > 0

    def start(self, fn: Callable[..., Any], done: Callable[[Any], None],
              failed: Callable[[BaseException], None],
              partial: Callable[[Any], None] | None = None) -> None:
        """Run ``fn()`` on the pool; with ``partial``, ``fn(hand_over)`` may call ``hand_over(x)``
        any number of times and each ``x`` reaches ``partial`` on the GUI thread, in order."""
        signals = _Signals(self)
        self._signals.append(signals)
        if partial is not None:
            signals.partial.connect(partial)
            job_fn = fn
            fn = lambda: job_fn(signals.partial.emit)  # noqa: E731

        def finish(slot, value) -> None:
            self._signals.remove(signals)
            signals.deleteLater()
            slot(value)

        signals.done.connect(lambda r: finish(done, r))
        signals.failed.connect(lambda e: finish(failed, e))
        self.pool.start(_Job(fn, signals))

    def shutdown(self) -> None:
        self.pool.clear()
        self.pool.waitForDone(60_000)
