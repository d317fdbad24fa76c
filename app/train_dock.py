"""The training dock: Train / Cancel / Settings, progress with ETA and images/s, and the live
loss chart (each loss term, the total and the learning rate)."""

from __future__ import annotations

import time

from PySide6.QtCharts import QChart, QChartView, QLineSeries, QLogValueAxis, QValueAxis
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor, QPainter
from PySide6.QtWidgets import (QFrame, QHBoxLayout, QLabel, QProgressBar, QPushButton, QScrollArea, QVBoxLayout,
                               QWidget)

from detector.train_config import EventKind, TrainEvent

LOSS_LABELS = {
    "loss_objectness": "RPN objectness", "loss_rpn_box_reg": "RPN box",
    "loss_classifier": "classifier", "loss_box_reg": "box regression",
    "loss_mask": "mask", "loss_keypoint": "keypoint", "loss": "total",
}
COLORS = ["#8ab4f8", "#f28b82", "#fdd663", "#81c995", "#c58af9", "#78d9ec", "#ffffff"]


class LossChart(QChartView):
    """Each loss term on its own line, the total, and the learning rate on a second axis."""

    def __init__(self, parent=None):
        chart = QChart()
        chart.setBackgroundBrush(QColor("#202124"))
        chart.legend().setLabelColor(QColor("#e8eaed"))
        chart.legend().setAlignment(Qt.AlignmentFlag.AlignRight)
        super().__init__(chart, parent)
        chart.setBackgroundRoundness(0)
        chart.layout().setContentsMargins(0, 0, 0, 0)
        self.setStyleSheet("background: #202124; border: none;")
        self.setRenderHint(QPainter.RenderHint.Antialiasing)
        self.setMinimumHeight(180)
        self.series: dict[str, QLineSeries] = {}
        self.ax = QValueAxis()
        self.ax.setLabelFormat("%d")
        self.ax.setTitleText("step")
        self.ay = QLogValueAxis()
        self.ay.setBase(10)
        self.ay.setLabelFormat("%.3g")
        self.ay.setTitleText("loss")
        self.alr = QValueAxis()
        self.alr.setLabelFormat("%.2g")
        self.alr.setTitleText("learning rate")
        for axis in (self.ax, self.ay, self.alr):
            axis.setLabelsColor(QColor("#e8eaed"))
            axis.setTitleBrush(QColor("#e8eaed"))
        chart.addAxis(self.ax, Qt.AlignmentFlag.AlignBottom)
        chart.addAxis(self.ay, Qt.AlignmentFlag.AlignLeft)
        chart.addAxis(self.alr, Qt.AlignmentFlag.AlignRight)
        chart.setTitleBrush(QColor("#9aa0a6"))
        self.reset()

    def reset(self) -> None:
        for s in self.series.values():
            self.chart().removeSeries(s)
        self.series.clear()
        self._max_step, self._lo, self._hi, self._lr_hi = 1, 1e-3, 1.0, 1e-6
        # QtCharts draws no axes without a series: say what will appear instead of a blank box.
        self.chart().setTitle("Each loss term, the total and the learning rate are drawn here, "
                              "live, while the model trains")

    def _line(self, key: str) -> QLineSeries:
        s = self.series.get(key)
        if s is None:
            s = QLineSeries()
            s.setName(LOSS_LABELS.get(key, key) if key != "lr" else "learning rate")
            pen = s.pen()
            pen.setColor(QColor(COLORS[len(self.series) % len(COLORS)] if key != "lr" else "#9aa0a6"))
            pen.setWidthF(2.0 if key == "loss" else 1.2)
            if key == "lr":
                pen.setStyle(Qt.PenStyle.DashLine)
            s.setPen(pen)
            self.chart().addSeries(s)
            s.attachAxis(self.ax)
            s.attachAxis(self.alr if key == "lr" else self.ay)
            self.series[key] = s
        return s

    def add(self, step: int, losses: dict[str, float], lr: float) -> None:
        if not self.series:
            self.chart().setTitle("")
        for key, value in losses.items():
            if value > 0:
                self._line(key).append(step, value)
                self._lo, self._hi = min(self._lo, value), max(self._hi, value)
        self._line("lr").append(step, lr)
        self._lr_hi = max(self._lr_hi, lr)
        self._max_step = max(self._max_step, step)
        self.ax.setRange(0, self._max_step)
        self.ay.setRange(self._lo * 0.8, self._hi * 1.2)
        self.alr.setRange(0, self._lr_hi * 1.1)


class TrainingPanel(QWidget):
    """The training dock: Train / Cancel / Settings, progress with ETA, images/s, the chart."""

    train_clicked = Signal()
    cancel_clicked = Signal()
    settings_clicked = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.train_button = QPushButton("Train")
        self.train_button.setToolTip("Fine-tune on the reviewed images (Ctrl+T)")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.settings_button = QPushButton("Settings…")
        self.train_button.clicked.connect(self.train_clicked.emit)
        self.cancel_button.clicked.connect(self.cancel_clicked.emit)
        self.settings_button.clicked.connect(self.settings_clicked.emit)
        row = QHBoxLayout()
        for b in (self.train_button, self.cancel_button, self.settings_button):
            row.addWidget(b)
        self.progress = QProgressBar()
        self.progress.setFormat("not training")
        self.progress.setValue(0)
        self.speed = QLabel("")
        self.auto = QLabel("")  # when the next background run starts (AutoTrainer)
        self.auto.setStyleSheet("color: #81c995;")
        self.auto.hide()  # shown with a status: empty, it took a line from the profile's text
        self.profile = QLabel("")  # which settings run and why (the start event says)
        self.profile.setWordWrap(True)
        self.profile.setStyleSheet("color: #9aa0a6; background: transparent;")
        self.result = QLabel("")
        self.result.setWordWrap(True)
        self.speed.setWordWrap(True)
        self.chart = LossChart()
        # Controls and numbers on the left, the chart on the right with the dock's full height:
        # stacked under the buttons it was ~25 px tall at the default window size.
        controls = QVBoxLayout()
        controls.addLayout(row)
        controls.addWidget(self.progress)
        controls.addWidget(self.speed)
        controls.addWidget(self.auto)
        # The profile's reasons run to ~8 lines at this width, more than the dock's height leaves
        # at the default window size: they scroll in the space left instead of being clipped.
        self.profile_area = QScrollArea()
        self.profile_area.setWidget(self.profile)
        self.profile_area.setWidgetResizable(True)
        self.profile_area.setFrameShape(QFrame.Shape.NoFrame)
        self.profile_area.setStyleSheet("QScrollArea, QWidget#qt_scrollarea_viewport { background: transparent; }")
        self.profile_area.viewport().setAutoFillBackground(False)
        self.profile_area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.profile.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        controls.addWidget(self.profile_area, 1)
        controls.addWidget(self.result)
        left = QWidget()
        left.setLayout(controls)
        left.setFixedWidth(340)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addWidget(left)
        lay.addWidget(self.chart, 1)
        self._t0, self._step0 = 0.0, 0

    def set_auto_status(self, text: str) -> None:
        self.auto.setText(text)
        self.auto.setVisible(bool(text))

    def started(self) -> None:
        self.chart.reset()
        self.train_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setRange(0, 0)
        self.progress.setFormat("starting…")
        self.result.setText("")
        self._t0 = time.monotonic()

    def on_event(self, ev: TrainEvent) -> None:
        if ev.kind is EventKind.PREPARE:  # a download before the run (MB; total 0 when unknown)
            self.progress.setRange(0, ev.total_steps)
            self.progress.setValue(ev.step)
            self.progress.setFormat(f"downloading weights: {ev.step} of {ev.total_steps or '?'} MB")
            self.speed.setText(ev.message.partition(":")[0])
        elif ev.kind is EventKind.START:
            self.progress.setRange(0, max(1, ev.total_steps))
            self.progress.setValue(ev.step)
            self.progress.setFormat("step %v/%m")
            head, _, profile = ev.message.partition("; profile ")
            self.speed.setText(head)
            self.profile.setText(f"Profile {profile}" if profile else "")
            self._t0 = time.monotonic()
            self._step0 = ev.step
        elif ev.kind is EventKind.STEP:
            step, total = ev.step, ev.total_steps
            self.progress.setRange(0, total)
            self.progress.setValue(step)
            if "eta_s" in ev.metrics:  # a time budget still fitting the step count: its time left
                self.progress.setFormat(f"step %v  ETA ~{int(ev.metrics['eta_s'])} s (time budget)")
            else:
                done = max(1, step - self._step0)
                eta = (time.monotonic() - self._t0) / done * (total - step)
                self.progress.setFormat(f"step %v/%m  ETA {int(eta)} s")
            self.speed.setText(f"{ev.images_per_s:.2f} images/s · loss {ev.losses.get('loss', 0):.3f}")
            self.chart.add(step, ev.losses, ev.lr)
        elif ev.kind is EventKind.EVAL:
            self.progress.setFormat("evaluating… done")

    def stopped(self, text: str) -> None:
        self.train_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if self.progress.maximum() == 0:
            self.progress.setRange(0, 1)
        self.progress.setFormat("not training")
        self.result.setText(text)
