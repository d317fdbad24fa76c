"""Training from the window: the settings of the next run, the child process, auto-training, the
model versions, and the promotion of a finished run (the rule is detector.versions.register,
the same as ``loupe train --register``)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QFileDialog, QMessageBox, QWidget

from detector.domain import ImageStatus
from detector.store import Project
from detector.train_config import TrainConfig
from detector.versions import next_checkpoint, register

from .autotrain import AutoTrainer
from .train_dialogs import ModelVersionsDialog, TrainingSettingsDialog
from .train_dock import TrainingPanel
from .train_runner import TrainRunner


class TrainingController(QObject):
    """``start()`` a run; ``use_model(path)`` asks the window to load a version and re-annotate."""

    use_model = Signal(str)
    running_changed = Signal(bool)
    message = Signal(str, int)  # status-bar text, milliseconds

    def __init__(self, parent: QWidget, project: Callable[[], Project | None]):
        super().__init__(parent)
        self._parent, self._project = parent, project
        self.config = TrainConfig(weights="active")  # what the next run is asked for
        self.runner = TrainRunner(self)
        self.panel = TrainingPanel()
        self.runner.event.connect(self.panel.on_event)
        self.runner.finished.connect(self._finished)
        self.panel.train_clicked.connect(self.start)
        self.panel.cancel_clicked.connect(self.runner.cancel)
        self.panel.settings_clicked.connect(self.edit_settings)
        self.autotrain = AutoTrainer(project, lambda: self.runner.running, self.start, self)
        self.autotrain.status.connect(self.panel.set_auto_status)
        self._started_with: dict = {}

    def edit_settings(self) -> None:
        dlg = TrainingSettingsDialog(self.config, self.autotrain.settings, self._parent)
        if dlg.exec():
            self.config, self.autotrain.settings = dlg.config(), dlg.auto()
            self.autotrain.announce()

    def start(self) -> None:
        project = self._project()
        if project is None or self.runner.running:
            return
        reviewed = project.images(ImageStatus.REVIEWED)
        labelled = [r for r in reviewed if any(i.touched_by_person for i in project.instances(r.id))]
        if len(reviewed) < 2 or not labelled:
            self.notify("Not enough to train on",
                        f"Training needs at least 2 reviewed images with some objects labelled "
                        f"(now {len(reviewed)} reviewed, {len(labelled)} with objects). Correct a few "
                        "images and mark them reviewed with Space.")
            return
        output = next_checkpoint(project, int(time.time()))
        active = project.active_model()
        self.panel.started()
        self.running_changed.emit(True)
        self._started_with = self.config.to_dict()
        self.autotrain.note_started()
        self.runner.start(str(project.root), str(project.db_path), output, self.config,
                          active.path if active else None)

    def _finished(self, result: dict) -> None:
        self.running_changed.emit(False)
        if not result["ok"]:
            self.panel.stopped(result["message"])
            if not result["cancelled"]:
                self.notify("Training stopped", result["message"])
            return
        metrics = result.get("metrics") or {}
        reg = register(self._project(), result["checkpoint"], metrics.get("after"), metrics.get("before"),
                       {**self._started_with, "log": result.get("log")}, int(result.get("images_seen") or 0))
        text = reg.text()
        if reg.promoted:
            self.use_model.emit(reg.version.path)
        self.panel.stopped(text)
        self.message.emit(text, 15000)
        self.autotrain.announce()

    def stop(self) -> None:
        """Closing: a run is asked to stop, then killed if it takes over 10 s."""
        if self.runner.running:
            self.runner.cancel()
            if not self.runner.proc.waitForFinished(10_000):
                self.runner.kill()

    # -- model versions -------------------------------------------------------------------------
    def show_versions(self) -> None:
        if self._project() is None:
            return
        dlg = ModelVersionsDialog(self._project(), self._parent)
        dlg.activate.connect(lambda vid: (self.activate_version(vid), dlg.refresh()))
        dlg.delete.connect(lambda vid: (self.delete_version(vid), dlg.refresh()))
        dlg.export.connect(self.export_version)
        dlg.show()
        self._versions_dialog = dlg

    def _version(self, version_id: int):
        return next(m for m in self._project().models() if m.id == version_id)

    def activate_version(self, version_id: int) -> None:
        v = self._version(version_id)
        self._project().activate_model(version_id)
        self.use_model.emit(v.path)

    def delete_version(self, version_id: int) -> None:
        v = self._version(version_id)
        if v.active:
            self.notify("Model versions", "The active model cannot be deleted; activate another first.")
            return
        self._project().delete_model(version_id)
        for f in (Path(v.path), Path(v.path).with_suffix(".log.jsonl")):
            f.unlink(missing_ok=True)

    def export_version(self, version_id: int) -> None:
        v = self._version(version_id)
        path, _ = QFileDialog.getSaveFileName(self._parent, "Export checkpoint", f"{v.name}.pt",
                                              "Checkpoints (*.pt)")
        if path:
            shutil.copyfile(v.path, path)

    def notify(self, title: str, text: str) -> None:
        """A message that does not block (the app keeps working while it is shown)."""
        box = QMessageBox(QMessageBox.Icon.Information, title, text, QMessageBox.StandardButton.Ok, self._parent)
        box.setModal(False)
        box.show()
        self._last_notice = box
        self.message.emit(text, 15000)
