"""One-click fine-tuning: a child process runs `loupe train --json-events`, the dock plots it.

The child process is the same code path as the command line; it isolates crashes and the GIL, so
the GUI never stalls. Its JSON lines become plain dicts delivered through signals.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from PySide6.QtCharts import QChart, QChartView, QLineSeries, QLogValueAxis, QValueAxis
from PySide6.QtCore import QObject, QProcess, QProcessEnvironment, Qt, Signal
from PySide6.QtGui import QColor, QPainter
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDialog, QDialogButtonBox, QDoubleSpinBox,
                               QFileDialog, QFormLayout, QHBoxLayout, QLabel, QProgressBar,
                               QPushButton, QSpinBox, QTableWidget, QTableWidgetItem, QVBoxLayout,
                               QWidget)

import detector

LOSS_LABELS = {
    "loss_objectness": "RPN objectness", "loss_rpn_box_reg": "RPN box",
    "loss_classifier": "classifier", "loss_box_reg": "box regression",
    "loss_mask": "mask", "loss_keypoint": "keypoint", "loss": "total",
}
COLORS = ["#8ab4f8", "#f28b82", "#fdd663", "#81c995", "#c58af9", "#78d9ec", "#ffffff"]


@dataclass
class TrainSettings:
    """What the settings dialog edits; defaults are what one click uses."""

    iterations: int = 0  # 0: let the trainer choose (20 epochs, at least 100 steps)
    lr: float = 0.0  # 0: the trainer's default for the batch size
    batch_size: int = 0  # 0: the profile's (4 on a GPU, 2 on a CPU)
    image_size: int = 0  # 0: the profile's
    trainable_layers: int = -1  # -1: the trainer's default
    augment: bool = True
    device: str = ""  # "": best available
    weights: str = "active"  # active, coco, none, or a checkpoint path
    backbone: str = ""  # "": resnet50_v2, or the checkpoint's
    optimizer: str = ""  # "": AdamW from random weights, SGD from learned ones
    auto_train: bool = True  # train in the background once a model exists ...
    auto_every: int = 10  # ... after every this many newly reviewed images
    extra_args: list[str] = field(default_factory=list)

    def to_args(self, active: str | None) -> list[str]:
        weights = self.weights
        if weights == "active":
            weights = active or "coco"
        args = ["--weights", weights]
        if self.batch_size:
            args += ["--batch-size", str(self.batch_size)]
        if self.image_size:
            args += ["--image-size", str(self.image_size)]
        if self.iterations:
            args += ["--iterations", str(self.iterations)]
        if self.lr:
            args += ["--lr", str(self.lr)]
        if self.optimizer:
            args += ["--optimizer", self.optimizer]
        if self.trainable_layers >= 0:
            args += ["--trainable-layers", str(self.trainable_layers)]
        if not self.augment:
            args.append("--no-augment")
        if self.device:
            args += ["--device", self.device]
        if self.backbone and weights in ("coco", "none"):
            args += ["--backbone", self.backbone]
        return args + list(self.extra_args)


class TrainRunner(QObject):
    """Starts and watches one training child process."""

    event = Signal(dict)  # every JSON line (start, step, checkpoint, eval, done, cancelled, error)
    finished = Signal(dict)  # {"ok", "cancelled", "checkpoint", "message", "metrics", "log"}

    def __init__(self, parent=None):
        super().__init__(parent)
        self.proc: QProcess | None = None
        self._buf = b""
        self._last: dict = {}
        self._metrics: dict = {}
        self._error = ""
        self._stderr = b""
        self.log_path: Path | None = None
        self.output: Path | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.state() != QProcess.ProcessState.NotRunning

    def start(self, folder: str, db_path: str, output: Path, settings: TrainSettings,
              active: str | None) -> None:
        self.output = Path(output)
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = self.output.with_suffix(".log.jsonl")
        self.log_path.write_text("")
        self._buf, self._last, self._metrics, self._error, self._stderr = b"", {}, {}, "", b""
        self._kinds: set[str] = set()
        self.summary: dict = {}
        args = ["-m", "detector.cli", "train", folder, "--project", db_path, "-o", str(self.output),
                "--json-events", "--evaluate", *settings.to_args(active)]
        if active and Path(active).exists():
            args += ["--compare", active]
        proc = QProcess(self)
        env = QProcessEnvironment.systemEnvironment()
        env.insert("PYTHONUNBUFFERED", "1")
        proc.setProcessEnvironment(env)
        proc.setWorkingDirectory(str(Path(detector.__file__).resolve().parent.parent))
        proc.readyReadStandardOutput.connect(self._read)
        proc.readyReadStandardError.connect(lambda: setattr(self, "_stderr", (self._stderr + bytes(
            proc.readAllStandardError()))[-20000:]))
        proc.finished.connect(self._done)
        proc.errorOccurred.connect(self._proc_error)
        self.proc = proc
        proc.start(sys.executable, args)

    def cancel(self) -> None:
        """SIGTERM: the trainer stops at the next step and keeps a resumable checkpoint."""
        if self.running:
            self.proc.terminate()

    def kill(self) -> None:
        if self.running:
            self.proc.kill()
            self.proc.waitForFinished(5000)

    def _read(self) -> None:
        self._buf += bytes(self.proc.readAllStandardOutput())
        *lines, self._buf = self._buf.split(b"\n")
        with open(self.log_path, "ab") as log:
            for raw in lines:
                line = raw.decode("utf-8", "replace").strip()
                if not line.startswith("{"):
                    continue
                log.write(raw + b"\n")
                try:
                    ev = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if "kind" not in ev:
                    self.summary = ev  # the closing summary line of `loupe train`
                    continue
                self._last = ev
                self._kinds.add(ev["kind"])
                if ev["kind"] == "eval":
                    self._metrics = ev.get("metrics", {})
                elif ev["kind"] == "error":
                    self._error = ev.get("message", "")
                self.event.emit(ev)

    def _proc_error(self, err) -> None:
        if err == QProcess.ProcessError.FailedToStart:
            self.finished.emit({"ok": False, "cancelled": False, "checkpoint": None,
                                "message": "could not start the training process", "metrics": {}})

    def _done(self, code: int, status) -> None:
        self._read()
        cancelled = "cancelled" in self._kinds
        crashed = status == QProcess.ExitStatus.CrashExit and not cancelled
        ok = code == 0 and "done" in self._kinds
        if self._error:
            message = self._error
        elif crashed or (code != 0 and not cancelled):
            tail = self._stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
            message = ("The training process stopped unexpectedly"
                       + (f": {' '.join(tail)}" if tail else "") + ". The current model is kept.")
        else:
            message = "cancelled; the current model is kept" if cancelled else "done"
        self.finished.emit({"ok": ok and not cancelled, "cancelled": cancelled,
                            "checkpoint": str(self.output), "message": message,
                            "metrics": self._metrics, "log": str(self.log_path),
                            "images_seen": self.summary.get("images_seen", 0)})


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
        self.profile = QLabel("")  # which settings run and why (the start event says)
        self.profile.setWordWrap(True)
        self.profile.setStyleSheet("color: #9aa0a6;")
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
        controls.addWidget(self.profile)
        controls.addWidget(self.result)
        controls.addStretch(1)
        left = QWidget()
        left.setLayout(controls)
        left.setFixedWidth(340)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addWidget(left)
        lay.addWidget(self.chart, 1)
        self._t0 = 0.0

    def started(self) -> None:
        self.chart.reset()
        self.train_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setRange(0, 0)
        self.progress.setFormat("starting…")
        self.result.setText("")
        self._t0 = time.monotonic()

    def on_event(self, ev: dict) -> None:
        kind = ev.get("kind")
        if kind == "start":
            self.progress.setRange(0, max(1, ev.get("total_steps", 1)))
            self.progress.setValue(ev.get("step", 0))
            message = ev.get("message", "")
            head, _, profile = message.partition("; profile ")
            self.speed.setText(head)
            self.profile.setText(f"Profile {profile}" if profile else "")
            self._t0 = time.monotonic()
            self._step0 = ev.get("step", 0)
        elif kind == "step":
            step, total = ev["step"], ev["total_steps"]
            self.progress.setRange(0, total)
            self.progress.setValue(step)
            done = max(1, step - getattr(self, "_step0", 0))
            eta = (time.monotonic() - self._t0) / done * (total - step)
            self.progress.setFormat(f"step %v/%m  ETA {int(eta)} s")
            self.speed.setText(f"{ev.get('images_per_s', 0):.2f} images/s · loss {ev['losses'].get('loss', 0):.3f}")
            self.chart.add(step, ev["losses"], ev.get("lr", 0.0))
        elif kind == "eval":
            self.progress.setFormat("evaluating… done")

    def stopped(self, text: str) -> None:
        self.train_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if self.progress.maximum() == 0:
            self.progress.setRange(0, 1)
        self.progress.setFormat("not training")
        self.result.setText(text)


def _ap(metrics: dict | None, key: str) -> str:
    if not metrics or not metrics.get(key):
        return "—"
    return f"{metrics[key]['AP']:.3f}"


class TrainSettingsDialog(QDialog):
    def __init__(self, settings: TrainSettings, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Training settings")
        s = settings
        self.iterations = QSpinBox()
        self.iterations.setRange(0, 1_000_000)
        self.iterations.setSpecialValueText("automatic (20 epochs, ≥ 100 steps)")
        self.iterations.setValue(s.iterations)
        self.lr = QDoubleSpinBox()
        self.lr.setDecimals(5)
        self.lr.setRange(0, 1)
        self.lr.setSingleStep(0.001)
        self.lr.setSpecialValueText("automatic")
        self.lr.setValue(s.lr)
        self.optimizer = QComboBox()
        for label, value in (("automatic (AdamW from random weights, else SGD)", ""), ("SGD", "sgd"),
                             ("AdamW", "adamw")):
            self.optimizer.addItem(label, value)
        self.optimizer.setCurrentIndex(max(0, self.optimizer.findData(s.optimizer)))
        self.batch = QSpinBox()
        self.batch.setRange(0, 64)
        self.batch.setSpecialValueText("automatic (4 on a GPU, 2 on a CPU)")
        self.batch.setValue(s.batch_size)
        self.size = QSpinBox()
        self.size.setRange(0, 2048)
        self.size.setSpecialValueText("automatic (800 on a GPU; on a CPU the images' own, up to 512)")
        self.size.setSingleStep(32)
        self.size.setValue(s.image_size)
        self.layers = QSpinBox()
        self.layers.setRange(-1, 5)
        self.layers.setSpecialValueText("automatic")
        self.layers.setValue(s.trainable_layers)
        self.augment = QCheckBox("flips, colour and scale jitter")
        self.augment.setChecked(s.augment)
        self.device = QComboBox()
        for label, value in (("best available", ""), ("CPU", "cpu"), ("CUDA GPU", "cuda"), ("Apple MPS", "mps")):
            self.device.addItem(label, value)
        self.device.setCurrentIndex(max(0, self.device.findData(s.device)))
        self.weights = QComboBox()
        for label, value in (("the active model", "active"), ("torchvision COCO", "coco"),
                             ("random (from scratch)", "none")):
            self.weights.addItem(label, value)
        if s.weights not in ("active", "coco", "none"):
            self.weights.addItem(s.weights, s.weights)
        self.weights.addItem("a checkpoint file…", "__file__")
        self.weights.setCurrentIndex(max(0, self.weights.findData(s.weights)))
        self.weights.activated.connect(self._maybe_file)
        self.backbone = QComboBox()
        for label, value in (("automatic", ""), ("ResNet-50 FPN v2", "resnet50_v2"),
                             ("ResNet-18 FPN (light)", "resnet18")):
            self.backbone.addItem(label, value)
        self.backbone.setCurrentIndex(max(0, self.backbone.findData(s.backbone)))
        self.auto_train = QCheckBox("train in the background while I label (once a model exists)")
        self.auto_train.setChecked(s.auto_train)
        self.auto_every = QSpinBox()
        self.auto_every.setRange(1, 10_000)
        self.auto_every.setSuffix(" newly reviewed images")
        self.auto_every.setValue(max(1, s.auto_every))
        form = QFormLayout(self)
        form.addRow("Iterations", self.iterations)
        form.addRow("Optimizer", self.optimizer)
        form.addRow("Learning rate", self.lr)
        form.addRow("Batch size", self.batch)
        form.addRow("Image size (shorter side)", self.size)
        form.addRow("Backbone stages to train", self.layers)
        form.addRow("Augmentation", self.augment)
        form.addRow("Device", self.device)
        form.addRow("Starting weights", self.weights)
        form.addRow("Backbone (new models)", self.backbone)
        form.addRow("Auto-training", self.auto_train)
        form.addRow("… after every", self.auto_every)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)
        self._extra = list(s.extra_args)

    def _maybe_file(self) -> None:
        if self.weights.currentData() == "__file__":
            path, _ = QFileDialog.getOpenFileName(self, "Starting checkpoint", "", "Checkpoints (*.pt *.pth)")
            if path:
                self.weights.insertItem(0, path, path)
                self.weights.setCurrentIndex(0)
            else:
                self.weights.setCurrentIndex(0)

    def settings(self) -> TrainSettings:
        return TrainSettings(iterations=self.iterations.value(), lr=self.lr.value(), batch_size=self.batch.value(),
                             image_size=self.size.value(), trainable_layers=self.layers.value(),
                             augment=self.augment.isChecked(), device=self.device.currentData(),
                             weights=self.weights.currentData(), backbone=self.backbone.currentData(),
                             optimizer=self.optimizer.currentData(), auto_train=self.auto_train.isChecked(),
                             auto_every=self.auto_every.value(), extra_args=self._extra)


class ModelVersionsDialog(QDialog):
    """List versions with their metrics; activate, export or delete one."""

    activate = Signal(int)
    delete = Signal(int)
    export = Signal(int)

    def __init__(self, project, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Model versions")
        self.project = project
        self.table = QTableWidget(0, 7)
        self.table.setHorizontalHeaderLabels(["", "name", "created", "images", "bbox AP", "segm AP", "keypoint AP"])
        self.table.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        buttons = QHBoxLayout()
        for text, sig in (("Activate", self.activate), ("Export checkpoint…", self.export), ("Delete", self.delete)):
            b = QPushButton(text)
            b.clicked.connect(lambda _=False, s=sig: self._selected() is not None and s.emit(self._selected()))
            buttons.addWidget(b)
        lay = QVBoxLayout(self)
        lay.addWidget(self.table)
        lay.addLayout(buttons)
        self.resize(760, 320)
        self.refresh()

    def _selected(self) -> int | None:
        rows = self.table.selectionModel().selectedRows()
        return None if not rows else int(self.table.item(rows[0].row(), 1).data(Qt.ItemDataRole.UserRole))

    def refresh(self) -> None:
        versions = self.project.models()
        self.table.setRowCount(len(versions))
        for r, v in enumerate(versions):
            cells = ["●" if v.active else "", v.name, v.created_at[:19].replace("T", " "), str(v.images_seen),
                     _ap(v.metrics, "bbox"), _ap(v.metrics, "segm"), _ap(v.metrics, "keypoints")]
            for c, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setData(Qt.ItemDataRole.UserRole, v.id)
                self.table.setItem(r, c, item)
        self.table.resizeColumnsToContents()
