"""The instances and categories docks."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor, QIcon, QPixmap
from PySide6.QtWidgets import (QColorDialog, QDialog, QDialogButtonBox, QFormLayout, QHBoxLayout,
                               QLineEdit, QListWidget, QListWidgetItem, QMessageBox, QPushButton,
                               QVBoxLayout, QWidget)

from detector.coco_reader import IMPORTED_BY
from detector.domain import MODEL, Category, Instance

SCORE_ROLE = Qt.ItemDataRole.UserRole + 1
ID_ROLE = Qt.ItemDataRole.UserRole


def swatch(color: str) -> QIcon:
    pm = QPixmap(12, 12)
    pm.fill(QColor(color))
    return QIcon(pm)


def instance_state(inst: Instance) -> str:
    """Where an instance came from and what the person did with it, in the row's words."""
    if inst.source == MODEL:
        if inst.accepted:
            return "model · accepted"
        return "model · to check" if inst.changed_by == MODEL else "model · corrected"
    return "imported" if inst.changed_by == IMPORTED_BY else "yours"


def instance_row(inst: Instance, category: Category | None) -> str:
    """An instances-panel row: category, the model's score where it has one, instance_state."""
    score = f"   {inst.score:.2f}" if inst.score is not None else ""
    return f"{category.name if category else '?'}{score}   {instance_state(inst)}"


class InstancesPanel(QListWidget):
    """One row per instance (checkbox = visible), synchronised with the canvas selection."""

    visibility_changed = Signal(int, bool)
    ids_selected = Signal(list)
    below_slider = Signal(int)  # how many rows the confidence slider hides

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setSelectionMode(QListWidget.SelectionMode.ExtendedSelection)
        self.itemSelectionChanged.connect(lambda: self.ids_selected.emit(self.selected_ids()))
        self.itemChanged.connect(self._on_changed)

    def set_instances(self, instances: list[Instance], categories: dict[int, Category],
                      hidden: set[int], min_score: float = 0.0) -> None:
        self.blockSignals(True)
        self.clear()
        for inst in instances:
            cat = categories.get(inst.category_id)
            item = QListWidgetItem(instance_row(inst, cat))
            if cat:
                item.setIcon(swatch(cat.color))
            item.setData(ID_ROLE, inst.id)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Unchecked if inst.id in hidden else Qt.CheckState.Checked)
            # The slider hides untouched predictions on the canvas: their rows go with them.
            item.setData(SCORE_ROLE, inst.slider_score)
            self.addItem(item)
        self.blockSignals(False)
        self.apply_threshold(min_score)  # after: its count is a signal

    def apply_threshold(self, min_score: float) -> None:
        """Hide the rows of untouched predictions scored below the confidence slider."""
        hidden = 0
        for i in range(self.count()):
            score = self.item(i).data(SCORE_ROLE)
            self.item(i).setHidden(score is not None and score < min_score)
            hidden += self.item(i).isHidden()
        self.below_slider.emit(hidden)

    def selected_ids(self) -> list[int]:
        return [it.data(ID_ROLE) for it in self.selectedItems()]

    def select_ids(self, ids: list[int]) -> None:
        self.blockSignals(True)
        for i in range(self.count()):
            it = self.item(i)
            it.setSelected(it.data(ID_ROLE) in ids)
        self.blockSignals(False)

    def _on_changed(self, item: QListWidgetItem) -> None:
        self.visibility_changed.emit(item.data(ID_ROLE), item.checkState() == Qt.CheckState.Checked)


class CategoryDialog(QDialog):
    """Name, colour, keypoint names and skeleton (1-based pairs) of a category."""

    def __init__(self, category: Category | None, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Category")
        c = category or Category("")
        self.color = c.color
        self.name = QLineEdit(c.name)
        self.keypoints = QLineEdit(", ".join(c.keypoints))
        self.keypoints.setPlaceholderText("e.g. nose, left_eye, right_eye")
        self.skeleton = QLineEdit(", ".join(f"{a}-{b}" for a, b in c.skeleton))
        self.skeleton.setPlaceholderText("e.g. 1-2, 1-3 (1-based)")
        self.color_button = QPushButton()
        self.color_button.setIcon(swatch(self.color))
        self.color_button.clicked.connect(self._pick)
        form = QFormLayout(self)
        form.addRow("Name", self.name)
        form.addRow("Colour", self.color_button)
        form.addRow("Keypoints", self.keypoints)
        form.addRow("Skeleton", self.skeleton)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self._accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)
        self.result_category: Category | None = None
        self._id = c.id

    def _pick(self) -> None:
        col = QColorDialog.getColor(QColor(self.color), self, "Category colour")
        if col.isValid():
            self.color = col.name()
            self.color_button.setIcon(swatch(self.color))

    def parsed(self) -> Category:
        name = self.name.text().strip()
        if not name:
            raise ValueError("a category needs a name")
        kps = tuple(k.strip() for k in self.keypoints.text().split(",") if k.strip())
        skel = []
        for part in self.skeleton.text().replace(";", ",").split(","):
            part = part.strip()
            if not part:
                continue
            try:
                a, b = (int(v) for v in part.replace(" ", "").split("-"))
            except ValueError as exc:
                raise ValueError(f"skeleton entry {part!r} is not 'i-j'") from exc
            if not (1 <= a <= len(kps) and 1 <= b <= len(kps)):
                raise ValueError(f"skeleton entry {part!r} is outside 1..{len(kps)}")
            skel.append((a, b))
        return Category(name, self.color, kps, tuple(skel), self._id)

    def _accept(self) -> None:
        try:
            self.result_category = self.parsed()
        except ValueError as exc:
            QMessageBox.warning(self, "Category", str(exc))
            return
        self.accept()


class CategoriesPanel(QWidget):
    """Categories with visibility checkboxes; the selected one is used for new instances."""

    visibility_changed = Signal(int, bool)
    add_requested = Signal()
    edit_requested = Signal(int)
    current_changed = Signal(int)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.list = QListWidget()
        self.list.itemChanged.connect(
            lambda it: self.visibility_changed.emit(it.data(ID_ROLE), it.checkState() == Qt.CheckState.Checked))
        self.list.currentItemChanged.connect(
            lambda cur, _prev: cur is not None and self.current_changed.emit(cur.data(ID_ROLE)))
        self.list.itemDoubleClicked.connect(lambda it: self.edit_requested.emit(it.data(ID_ROLE)))
        add = QPushButton("Add…")
        add.clicked.connect(self.add_requested.emit)
        edit = QPushButton("Edit…")
        edit.clicked.connect(lambda: self.current_id() is not None and self.edit_requested.emit(self.current_id()))
        row = QHBoxLayout()
        row.addWidget(add)
        row.addWidget(edit)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        lay.addWidget(self.list)
        lay.addLayout(row)

    def set_categories(self, categories: list[Category], hidden: set[int]) -> None:
        current = self.current_id()
        self.list.blockSignals(True)
        self.list.clear()
        for i, c in enumerate(categories):
            label = f"{i + 1}  {c.name}" if i < 9 else c.name
            if c.keypoints:
                label += f"   ({len(c.keypoints)} keypoints)"
            it = QListWidgetItem(swatch(c.color), label)
            it.setData(ID_ROLE, c.id)
            it.setFlags(it.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            it.setCheckState(Qt.CheckState.Unchecked if c.id in hidden else Qt.CheckState.Checked)
            self.list.addItem(it)
            if c.id == current or (current is None and i == 0):
                self.list.setCurrentItem(it)
        self.list.blockSignals(False)

    def current_id(self) -> int | None:
        it = self.list.currentItem()
        return None if it is None else it.data(ID_ROLE)

    def set_current(self, category_id: int) -> None:
        for i in range(self.list.count()):
            if self.list.item(i).data(ID_ROLE) == category_id:
                self.list.setCurrentRow(i)
