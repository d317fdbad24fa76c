"""The training dialogs: the settings of the next run, and the project's model versions."""

from __future__ import annotations

from dataclasses import replace

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDialog, QDialogButtonBox, QDoubleSpinBox, QFileDialog,
                               QFormLayout, QHBoxLayout, QPushButton, QSpinBox, QTableWidget, QTableWidgetItem,
                               QVBoxLayout)

from detector.train_config import BACKBONES, CPU_MAX_SIZE, GPU_SIZE, OPTIMIZERS, TrainConfig

from .autotrain import AutoTrainSettings


class TrainingSettingsDialog(QDialog):
    """Edits a TrainConfig (0 / "automatic" in a field is None: the profile or the trainer
    chooses) and the auto-training switch; fields it does not show are kept as they were."""

    def __init__(self, config: TrainConfig, auto: AutoTrainSettings, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Training settings")
        self._start = c = config
        self.iterations = _spin(0, 1_000_000, c.iterations, "automatic (as many as fit in the profile's time)")
        self.lr = QDoubleSpinBox()
        self.lr.setDecimals(5)
        self.lr.setRange(0, 1)
        self.lr.setSingleStep(0.001)
        self.lr.setSpecialValueText("automatic")
        self.lr.setValue(c.lr or 0)
        self.optimizer = _combo([("automatic (AdamW from random weights, else SGD)", None)]
                                + [({"sgd": "SGD", "adamw": "AdamW"}[o], o) for o in OPTIMIZERS], c.optimizer)
        self.batch = _spin(0, 64, c.batch_size, "automatic (4 on a GPU, 2 on a CPU)")
        self.image_size = _spin(0, 2048, c.min_size, f"automatic (objects ~32-48 px, up to {CPU_MAX_SIZE} on a CPU, "
                                               f"{GPU_SIZE} on a GPU)")
        self.image_size.setSingleStep(32)
        self.layers = _spin(-1, 5, c.trainable_layers, "automatic", none=-1)
        self.augment = QCheckBox("flips, colour and scale jitter")
        self.augment.setChecked(c.augment)
        self.device = _combo([("best available", None), ("CPU", "cpu"), ("CUDA GPU", "cuda"),
                              ("Apple MPS", "mps")], c.device)
        choices = [("the active model", "active"), ("torchvision COCO", "coco"), ("random (from scratch)", "none")]
        if c.weights not in ("active", "coco", "none", None):
            choices.append((c.weights, c.weights))
        self.weights = _combo(choices + [("a checkpoint file…", "__file__")], c.weights)
        self.weights.activated.connect(lambda: _maybe_file(self, self.weights, "Starting checkpoint",
                                                           "Checkpoints (*.pt *.pth)"))
        trunks = [("ImageNet (torchvision's, cached or downloaded)", "imagenet"), ("random", "none")]
        if c.trunk not in ("imagenet", "none"):
            trunks.append((c.trunk, c.trunk))
        self.trunk = _combo(trunks + [("a ResNet-18 weights file…", "__file__")], c.trunk)
        self.trunk.activated.connect(lambda: _maybe_file(self, self.trunk, "ResNet-18 weights", "Weights (*.pth *.pt)"))
        self.backbone = _combo([("automatic", None)] + [(label, name) for name, label in BACKBONES.items()],
                               c.backbone)
        self.auto_train = QCheckBox("train in the background while I label (once a model exists)")
        self.auto_train.setChecked(auto.on)
        self.auto_every = QSpinBox()
        self.auto_every.setRange(1, 10_000)
        self.auto_every.setSuffix(" newly reviewed images")
        self.auto_every.setValue(max(1, auto.every))
        form = QFormLayout(self)
        for label, widget in (("Iterations", self.iterations), ("Optimizer", self.optimizer),
                              ("Learning rate", self.lr), ("Batch size", self.batch),
                              ("Image size (shorter side)", self.image_size),
                              ("Backbone stages to train", self.layers),
                              ("Augmentation", self.augment), ("Device", self.device),
                              ("Starting weights", self.weights), ("Backbone (new models)", self.backbone),
                              ("Light model's trunk (new models)", self.trunk),
                              ("Auto-training", self.auto_train), ("… after every", self.auto_every)):
            form.addRow(label, widget)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

    def config(self) -> TrainConfig:
        layers = self.layers.value()
        return replace(self._start, iterations=self.iterations.value() or None, lr=self.lr.value() or None,
                       batch_size=self.batch.value() or None, min_size=self.image_size.value() or None,
                       trainable_layers=None if layers < 0 else layers, augment=self.augment.isChecked(),
                       device=_data(self.device), weights=_data(self.weights),
                       backbone=_data(self.backbone), optimizer=_data(self.optimizer),
                       trunk=_data(self.trunk) or "imagenet")

    def auto(self) -> AutoTrainSettings:
        return AutoTrainSettings(on=self.auto_train.isChecked(), every=self.auto_every.value())


def _maybe_file(parent, box: QComboBox, title: str, kinds: str) -> None:
    """The "a file…" entry of ``box`` picked: ask for the file and put it first (chosen)."""
    if box.currentData() == "__file__":
        path, _ = QFileDialog.getOpenFileName(parent, title, "", kinds)
        if path:
            box.insertItem(0, path, path)
        box.setCurrentIndex(0)


def _spin(lo: int, hi: int, value: int | None, automatic: str, none: int = 0) -> QSpinBox:
    box = QSpinBox()
    box.setRange(lo, hi)
    box.setSpecialValueText(automatic)  # shown at the minimum, which stands for None
    box.setValue(none if value is None else value)
    return box


def _combo(items: list[tuple[str, object]], current: object) -> QComboBox:
    """Items whose data None (automatic) is kept as "" in Qt; ``_data`` reads it back."""
    box = QComboBox()
    for label, value in items:
        box.addItem(label, "" if value is None else value)
    box.setCurrentIndex(max(0, box.findData("" if current is None else current)))
    return box


def _data(box: QComboBox) -> str | None:
    return box.currentData() or None


def _ap(metrics: dict | None, key: str) -> str:
    if not metrics or not metrics.get(key):
        return "—"
    return f"{metrics[key]['AP']:.3f}"


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
