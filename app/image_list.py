"""The image list dock: a model/view list that stays fast for 10,000+ images, filterable by status."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QAbstractListModel, QModelIndex, QSize, QSortFilterProxyModel, Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QListView, QVBoxLayout, QWidget

from detector.domain import ImageRecord, ImageStatus

from .thumbnails import THUMB_SIZE, ThumbnailCache

STATUS_COLORS = {
    ImageStatus.NEW: "#9aa0a6",
    ImageStatus.PREDICTED: "#8ab4f8",
    ImageStatus.IN_REVIEW: "#fdd663",
    ImageStatus.REVIEWED: "#81c995",
    ImageStatus.UNREADABLE: "#f28b82",
}
STATUS_ROLE = Qt.ItemDataRole.UserRole + 1
ID_ROLE = Qt.ItemDataRole.UserRole + 2
#: "Least confident first": images the model is most unsure about, then those not predicted
#: yet, then reviewed and unreadable ones (a float, so the proxy sorts in C++ at 100k rows).
UNSURE_ROLE = Qt.ItemDataRole.UserRole + 3
ORDERS = (("File name", ""), ("Least confident first", "uncertainty"))


def unsure_key(rec: ImageRecord) -> float:
    if rec.status in (ImageStatus.REVIEWED, ImageStatus.UNREADABLE):
        return 2e9
    if rec.uncertainty is None:
        return 1e9
    return -float(rec.uncertainty)


class ImageListModel(QAbstractListModel):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.records: list[ImageRecord] = []
        self._row_by_id: dict[int, int] = {}
        self.root: Path | None = None  # thumbnails only when the model knows the images root
        self.thumbnails = ThumbnailCache(self)
        self.thumbnails.ready.connect(self._on_thumbnail)

    def set_records(self, records: list[ImageRecord], root: Path | None = None) -> None:
        self.beginResetModel()
        if root is not None and root != self.root:
            self.thumbnails.clear()
            self.root = root
        self.records = list(records)
        self._row_by_id = {r.id: i for i, r in enumerate(self.records)}
        self.endResetModel()

    def update_record(self, rec: ImageRecord) -> None:
        row = self._row_by_id.get(rec.id)
        if row is None:
            return
        old = self.records[row]
        if (old.width, old.height, old.readable) != (rec.width, rec.height, rec.readable):
            self.thumbnails.forget(rec.id)  # the file changed, or became (un)readable
        self.records[row] = rec
        idx = self.index(row)
        self.dataChanged.emit(idx, idx)

    def _on_thumbnail(self, image_id: int) -> None:
        row = self._row_by_id.get(image_id)
        if row is not None:
            idx = self.index(row)
            self.dataChanged.emit(idx, idx, [Qt.ItemDataRole.DecorationRole])

    def row_of(self, image_id: int) -> int:
        return self._row_by_id.get(image_id, -1)

    def rowCount(self, parent=QModelIndex()) -> int:  # noqa: N802
        return 0 if parent.isValid() else len(self.records)

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        rec = self.records[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            # two short lines beside the thumbnail: the name, then where it stands
            text = f"{rec.path}\n{rec.status.value.replace('_', ' ')}"
            if rec.uncertainty is not None and rec.status in (ImageStatus.PREDICTED, ImageStatus.IN_REVIEW):
                text += f" · unsure {rec.uncertainty:.1f}"
            return text
        if role == Qt.ItemDataRole.DecorationRole:
            if self.root is None or rec.status is ImageStatus.UNREADABLE:
                return None
            # Asked only for rows on screen: the decode is queued off the GUI thread.
            return self.thumbnails.icon(rec.id, self.root / rec.path)
        if role == Qt.ItemDataRole.ToolTipRole:
            return rec.reason or rec.status.value
        if role == Qt.ItemDataRole.ForegroundRole:
            return QColor(STATUS_COLORS[rec.status])
        if role == STATUS_ROLE:
            return rec.status.value
        if role == ID_ROLE:
            return rec.id
        if role == UNSURE_ROLE:
            return unsure_key(rec)
        return None


class ImageListWidget(QWidget):
    """List plus status filter and order; emits ``image_chosen(image_id)``."""

    image_chosen = Signal(int)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.model = ImageListModel(self)
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setFilterRole(STATUS_ROLE)
        self.filter = QComboBox()
        self.filter.addItem("All images", "")
        for s in ImageStatus:
            self.filter.addItem(s.value.capitalize(), s.value)
        self.filter.currentIndexChanged.connect(self._on_filter)
        self.order = QComboBox()
        self.order.setToolTip("Least confident first: the images the model is most unsure about "
                              "(its predictions' score entropy) come first, and Next follows them")
        for text, value in ORDERS:
            self.order.addItem(text, value)
        self.order.currentIndexChanged.connect(self._on_order)
        self.proxy.setSortRole(UNSURE_ROLE)
        self.view = QListView()
        self.view.setModel(self.proxy)
        self.view.setUniformItemSizes(True)  # keeps 10,000+ rows fast
        self.view.setIconSize(QSize(THUMB_SIZE, THUMB_SIZE))
        self.view.selectionModel().currentChanged.connect(self._on_current)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        row = QHBoxLayout()
        row.addWidget(self.filter, 1)
        row.addWidget(self.order, 1)
        lay.addLayout(row)
        lay.addWidget(self.view)

    def _on_filter(self) -> None:
        value = self.filter.currentData()
        self.proxy.setFilterFixedString(value or "")
        if value:
            self.proxy.setFilterRegularExpression(f"^{value}$")

    def _on_order(self) -> None:
        if self.order.currentData():
            self.proxy.sort(0, Qt.SortOrder.AscendingOrder)
        else:
            self.proxy.sort(-1)  # the folder's order
        current = self.view.currentIndex()
        if current.isValid():
            self.view.scrollTo(current)

    def set_order(self, value: str) -> None:
        self.order.setCurrentIndex(max(0, self.order.findData(value)))

    def first(self) -> int | None:
        """The id at the top of the list as filtered and ordered."""
        if not self.proxy.rowCount():
            return None
        return int(self.proxy.data(self.proxy.index(0, 0), ID_ROLE))

    def _on_current(self, current, _previous) -> None:
        if current.isValid():
            self.image_chosen.emit(int(self.proxy.data(current, ID_ROLE)))

    def select(self, image_id: int) -> None:
        row = self.model.row_of(image_id)
        if row < 0:
            return
        idx = self.proxy.mapFromSource(self.model.index(row))
        if idx.isValid() and self.view.currentIndex() != idx:
            self.view.blockSignals(True)
            self.view.setCurrentIndex(idx)
            self.view.blockSignals(False)
            self.view.scrollTo(idx)

    def neighbour(self, image_id: int, step: int) -> int | None:
        """The id ``step`` rows away in the filtered list, or None at either end."""
        row = self.model.row_of(image_id)
        if row < 0:
            return None
        idx = self.proxy.mapFromSource(self.model.index(row))
        target = idx.row() + step
        if not idx.isValid() or not 0 <= target < self.proxy.rowCount():
            return None
        return int(self.proxy.data(self.proxy.index(target, 0), ID_ROLE))
