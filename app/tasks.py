"""The one shape of background work in the app: a plain function run on a QThreadPool whose
result (or exception) is handed to a signal's ``emit``, so it reaches the GUI thread queued
(superqt's worker shape: a runnable paired with a QObject of signals).

``Task`` is that runnable (image decoding, thumbnails); ``Jobs`` runs one-off jobs in order with
done / failed / partial callbacks (imports, exports, the starting model).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal, Slot


class Task(QRunnable):
    """Runs ``fn()`` on a pool thread; its result goes to ``deliver``, an exception to ``fail``
    (both usually a signal's ``emit``). A receiver already gone (window closed) is not an error."""

    def __init__(self, fn: Callable[[], Any], deliver: Callable[[Any], None],
                 fail: Callable[[BaseException], None] | None = None):
        super().__init__()
        self.fn, self.deliver, self.fail = fn, deliver, fail

    @Slot()
    def run(self) -> None:
        try:
            try:
                result = self.fn()
            except Exception as exc:  # reported, never a silent thread death
                if self.fail is None:
                    raise
                self.fail(exc)
            else:
                self.deliver(result)
        except RuntimeError:  # the signals' owner was deleted meanwhile
            pass


class Delivery(QObject):
    """Where a pool's answers land on the GUI thread: one per owner, connected once."""

    done = Signal(object)


class _Signals(QObject):
    done = Signal(object)
    failed = Signal(object)  # the exception
    partial = Signal(object)  # what the job hands over while it runs


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
        self.pool.start(Task(fn, signals.done.emit, signals.failed.emit))

    def shutdown(self) -> None:
        self.pool.clear()
        self.pool.waitForDone(60_000)
