"""PySide6 must not leak references to None / True / False.

PySide6 6.12.0 on Python 3.11 dropped a reference to None on every Qt call that returns nothing
(and to True/False on each signal emit); None is not immortal before Python 3.12, so after some
tens of thousands of calls (minutes of painting and status updates) the app aborted with
"Fatal Python error: none_dealloc". constraints.txt pins a version without the leak; this test
catches a version that brings it back, in milliseconds rather than after a crash.
"""

import sys

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QApplication, QLabel


class _Emitter(QObject):
    fired = Signal(object)


def _drift(fn, n=2000):
    before = (sys.getrefcount(None), sys.getrefcount(True), sys.getrefcount(False))
    for _ in range(n):
        fn()
    after = (sys.getrefcount(None), sys.getrefcount(True), sys.getrefcount(False))
    return [a - b for a, b in zip(after, before)]


def test_qt_calls_keep_the_reference_counts_of_none_and_the_booleans(qtbot):
    app = QApplication.instance()
    label = QLabel()
    qtbot.addWidget(label)
    emitter, got = _Emitter(), []
    emitter.fired.connect(got.append)
    for name, fn in (("processEvents", app.processEvents), ("setText", lambda: label.setText("x")),
                     ("setVisible", lambda: label.setVisible(False)), ("emit", lambda: emitter.fired.emit(1))):
        drift = _drift(fn)
        assert all(abs(d) < 50 for d in drift), f"{name}: None/True/False references drifted by {drift}"
    assert len(got) == 2000
