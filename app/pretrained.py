"""A starting model for a project that has none: torchvision's COCO Mask R-CNN, or weights from a file.

A banner over the image offers it whenever the project has no model: "Use the COCO model…" when
torchvision's file is in its cache, "Download…" (170 MB, with progress, cancellable, resumed on
the next try, hash-checked) when it is not, and "Load weights…" for a file (a Loupe checkpoint,
or a torchvision state dict copied from a machine with internet). COCO weights go through a
class-mapping dialog (COCO class -> project category, matched by name where possible), as CVAT
does when running a model. All file and model work runs off the GUI thread.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import (QComboBox, QDialog, QDialogButtonBox, QFileDialog, QFrame, QHBoxLayout,
                               QHeaderView, QLabel, QMainWindow, QMessageBox, QProgressBar, QPushButton,
                               QTableWidget, QVBoxLayout)

from detector.errors import LoupeError
from detector.store import Project

from .tasks import Jobs


class _Pretrained:
    """``detector.pretrained`` when first used: it imports torch and torchvision, which the
    window does not wait for (the inference worker imports them on its thread first)."""

    def __getattr__(self, name):
        from detector import pretrained

        return getattr(pretrained, name)


P = _Pretrained()

IGNORE = ""  # combo data: the COCO class is not kept
NEW = "\x00new"  # combo data: a new category named like the COCO class


class MappingDialog(QDialog):
    """COCO class -> project category; only mapped classes are kept as predictions."""

    def __init__(self, categories: list[str], mapping: dict[str, str], parent=None):
        super().__init__(parent)
        self.setWindowTitle("Map COCO classes to your categories")
        self.categories = categories
        text = QLabel("Predictions of a COCO class are stored as the category chosen for it; classes "
                      "left at “—” are not kept. Several classes may share one category.")
        text.setWordWrap(True)
        self.table = QTableWidget(0, 2)
        self.table.setHorizontalHeaderLabels(["COCO class", "becomes"])
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.table.verticalHeader().setVisible(False)
        self.combos: dict[str, QComboBox] = {}
        for name in [n for n in P.COCO_NAMES if n not in ("__background__", "N/A")]:
            row = self.table.rowCount()
            self.table.insertRow(row)
            self.table.setCellWidget(row, 0, QLabel(f"  {name}"))
            combo = QComboBox()
            combo.addItem("—", IGNORE)
            for c in categories:
                combo.addItem(c, c)
            if name not in categories:
                combo.addItem(f"new category “{name}”", NEW)
            target = mapping.get(name, IGNORE)
            combo.setCurrentIndex(max(0, combo.findData(target)))
            self.table.setCellWidget(row, 1, combo)
            self.combos[name] = combo
        self.all_new = QPushButton("Add every COCO class as a new category")
        self.all_new.clicked.connect(self.map_all_new)
        self.none = QPushButton("Clear")
        self.none.clicked.connect(lambda: [c.setCurrentIndex(0) for c in self.combos.values()])
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        self.ok = buttons.button(QDialogButtonBox.StandardButton.Ok)
        self.summary = QLabel("")
        for combo in self.combos.values():
            combo.currentIndexChanged.connect(self._update)
        row = QHBoxLayout()
        row.addWidget(self.all_new)
        row.addWidget(self.none)
        row.addStretch(1)
        lay = QVBoxLayout(self)
        lay.addWidget(text)
        lay.addWidget(self.table, 1)
        lay.addLayout(row)
        lay.addWidget(self.summary)
        lay.addWidget(buttons)
        self.resize(520, 640)
        self._update()

    def map_all_new(self) -> None:
        """Keep every class: to the category already chosen or named alike, else a new one."""
        lower = {c.lower().replace("_", " "): c for c in self.categories}
        for name, combo in self.combos.items():
            if combo.currentData() not in (IGNORE, NEW):
                continue
            combo.setCurrentIndex(max(0, combo.findData(lower.get(name.lower(), NEW))))

    def mapping(self) -> dict[str, str]:
        out = {}
        for name, combo in self.combos.items():
            data = combo.currentData()
            if data:
                out[name] = name if data == NEW else data
        return out

    def _update(self) -> None:
        m = self.mapping()
        self.ok.setEnabled(bool(m))
        self.summary.setText(f"{len(m)} COCO classes kept, as {len(set(m.values()))} categories"
                             if m else "Map at least one class.")


class _Progress(QObject):
    changed = Signal(int, int)  # bytes done, bytes in all (0: unknown)


class StartingModel(QObject):
    """The banner and the Model menu's "Start from COCO…" / "Load weights…"; ``added(path)`` when a
    starting model became the project's active model."""

    added = Signal(str)
    message = Signal(str)

    def __init__(self, window: QMainWindow, project: Callable[[], Project | None]):
        super().__init__(window)
        self.window, self.project = window, project
        self.jobs = Jobs(self)
        self.cancel = threading.Event()
        self.progress_signals = _Progress(self)
        self.ready = False  # the model side (torch) is imported: the window sets it, then refresh()
        self.banner = self._build_banner()

    # -- the banner -------------------------------------------------------------------------
    def _build_banner(self) -> QFrame:
        bar = QFrame()
        bar.setObjectName("startBanner")
        bar.setStyleSheet("#startBanner { background: #2d3a4a; border-bottom: 1px solid #4a5a6a; }")
        self.text = QLabel("")
        self.text.setWordWrap(True)
        self.use_button = QPushButton("Use the COCO model…")
        self.use_button.clicked.connect(lambda: self.use_coco())
        self.download_button = QPushButton("Download it…")  # the size is named once the model side is up
        self.download_button.clicked.connect(self.download)
        self.load_button = QPushButton("Load weights…")
        self.load_button.clicked.connect(lambda: self.load_weights())
        self.progress = QProgressBar()
        self.progress.setMaximumWidth(220)
        self.progress.setVisible(False)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setVisible(False)
        self.cancel_button.clicked.connect(self.cancel.set)
        close = QPushButton("×")
        close.setFlat(True)
        close.setToolTip("Hide; Model > Start from COCO weights… offers it again")
        close.clicked.connect(lambda: bar.setVisible(False))
        lay = QHBoxLayout(bar)
        lay.setContentsMargins(10, 6, 6, 6)
        lay.addWidget(self.text, 1)
        for w in (self.progress, self.cancel_button, self.use_button, self.download_button, self.load_button, close):
            lay.addWidget(w)
        self.progress_signals.changed.connect(self._on_progress)
        bar.setVisible(False)
        return bar

    def refresh(self) -> None:
        """Show the offer when the project has no model; say what is possible now."""
        project = self.project()
        if project is None or project.active_model() is not None or not self.ready:
            self.banner.setVisible(False)
            return
        self.download_button.setText(f"Download it ({P.SIZE_MB} MB)…")
        cached = P.cache_path().is_file()
        self.use_button.setVisible(cached)
        self.download_button.setVisible(not cached)
        self.text.setText(
            "No model yet. Start from torchvision's COCO Mask R-CNN (found in torchvision's cache) to "
            "pre-annotate now, or review a few images and Train." if cached else
            "No model yet. Download torchvision's COCO Mask R-CNN to pre-annotate now, load a weights "
            f"file, or review a few images and Train. Offline: put {P.cache_path().name} in "
            f"{P.cache_path().parent} (the link is in this text's tooltip).")
        # the whole of it, link included, one hover away: the banner stays short above the image
        self.text.setToolTip("" if cached else P.offline_help())
        self.banner.setVisible(True)

    def _busy(self, text: str, progress: bool = False) -> None:
        self.text.setText(text)
        for b in (self.use_button, self.download_button, self.load_button):
            b.setEnabled(False)
        self.progress.setVisible(progress)
        self.cancel_button.setVisible(progress)

    def _idle(self) -> None:
        for b in (self.use_button, self.download_button, self.load_button):
            b.setEnabled(True)
        self.progress.setVisible(False)
        self.cancel_button.setVisible(False)

    def _moved_on(self, project: Project) -> bool:
        """Whether another folder was opened while a job prepared a model for ``project``: the
        model stays that project's (registered there), and the offer is the open project's."""
        if self.project() is project:
            return False
        self.refresh()
        return True

    def _fail(self, exc: BaseException) -> None:
        self._idle()
        self.refresh()
        text = str(exc) if isinstance(exc, LoupeError) else f"{type(exc).__name__}: {exc}"
        self.text.setText(text)
        self.message.emit(text)

    # -- download ---------------------------------------------------------------------------
    def download(self) -> None:
        if self.jobs.running:
            return
        self.cancel.clear()
        self._busy("Downloading torchvision's COCO Mask R-CNN…", progress=True)
        self.progress.setRange(0, 0)
        dest = P.cache_path()
        url = P.MASK_WEIGHTS.url

        def work() -> str:
            P.download(url, dest, progress=lambda d, t: self.progress_signals.changed.emit(d >> 10, t >> 10),
                       cancel=self.cancel)
            return str(dest)

        def done(_path: str) -> None:
            self._idle()
            self.refresh()
            self.use_coco()

        self.jobs.start(work, done, self._fail)

    def _on_progress(self, done_kb: int, total_kb: int) -> None:
        if total_kb:
            self.progress.setRange(0, total_kb)
            self.progress.setValue(done_kb)
        self.progress.setFormat(f"{done_kb >> 10} / {total_kb >> 10} MB" if total_kb else f"{done_kb >> 10} MB")

    # -- COCO with a class mapping ----------------------------------------------------------
    def use_coco(self, weights_file: str | None = None, mapping: dict[str, str] | None = None) -> None:
        """Ask for the class mapping (unless given), then build the model off the GUI thread."""
        project = self.project()
        if project is None or self.jobs.running:
            return
        if mapping is None:
            names = [c.name for c in project.categories()]
            saved = P.saved_mapping(project)
            dlg = MappingDialog(names, saved or P.default_mapping(project.categories()), self.window)
            accepted = dlg.exec() == QDialog.DialogCode.Accepted
            mapping = dlg.mapping()
            dlg.deleteLater()
            if not accepted:
                return
        out = project.db_path.parent / "models" / f"coco-{int(time.time())}.pt"
        self._busy("Preparing the COCO model for this project…")

        def work() -> str:
            P.coco_start(project, mapping, out, weights_file=weights_file)
            return str(out)

        def done(path: str) -> None:
            self._idle()
            if self._moved_on(project):
                return
            self.banner.setVisible(False)
            self.added.emit(path)

        self.jobs.start(work, done, self._fail)

    # -- a file -----------------------------------------------------------------------------
    def load_weights(self, path: str | None = None) -> None:
        """A Loupe checkpoint becomes a model version; a torchvision state dict goes through the mapping."""
        project = self.project()
        if project is None or self.jobs.running:
            return
        if path is None:
            path, _ = QFileDialog.getOpenFileName(self.window, "Load weights", str(Path.home()),
                                                  "Weights (*.pt *.pth);;All files (*)")
            if not path:
                return
        self._busy(f"Reading {Path(path).name}…")

        def work() -> tuple[str, str]:
            try:
                from detector.model import load_checkpoint

                load_checkpoint(path)
            except LoupeError as loupe_error:
                try:
                    P.read_state_dict(path)
                except LoupeError:
                    raise loupe_error from None  # neither: the checkpoint's reason names the file
                return "torchvision", path
            models = project.db_path.parent / "models"
            models.mkdir(parents=True, exist_ok=True)
            dest = models / f"loaded-{int(time.time())}-{Path(path).name}"
            shutil.copyfile(path, dest)
            project.add_model(Path(path).stem, str(dest), {}, {"weights": str(path)}, 0, activate=True)
            return "loupe", str(dest)

        def done(result: tuple[str, str]) -> None:
            kind, where = result
            self._idle()
            if self._moved_on(project):
                return
            if kind == "torchvision":
                self.use_coco(weights_file=where)
            else:
                self.banner.setVisible(False)
                self.added.emit(where)

        self.jobs.start(work, done, self._fail)


def notify_error(window: QMainWindow, text: str) -> None:
    box = QMessageBox(QMessageBox.Icon.Warning, "Starting model", text, QMessageBox.StandardButton.Ok, window)
    box.setModal(False)
    box.show()


__all__ = ["MappingDialog", "StartingModel", "Qt"]
