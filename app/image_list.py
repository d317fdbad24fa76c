"""The image list dock: a model/view list that stays fast for 10,000+ images, filterable by status."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QAbstractListModel, QModelIndex, QSize, QSortFilterProxyModel, Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QLineEdit, QListView, QVBoxLayout, QWidget

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


def n_images(n: int) -> str:
    """'1 image', '2,500 images'."""
    return f"{n:,} image" + ("" if n == 1 else "s")


class ImageListModel(QAbstractListModel):
    record_updated = Signal(int)  # an image's record (and maybe its instances) changed

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

    def append_records(self, records: list[ImageRecord]) -> None:
        """Add rows at the end (a scan streaming in); ids already listed are left as they are."""
        fresh = [r for r in records if r.id not in self._row_by_id]
        if not fresh:
            return
        start = len(self.records)
        self.beginInsertRows(QModelIndex(), start, start + len(fresh) - 1)
        for k, r in enumerate(fresh):
            self._row_by_id[r.id] = start + k
        self.records.extend(fresh)
        self.endInsertRows()

    def update_record(self, rec: ImageRecord) -> None:
        row = self._row_by_id.get(rec.id)
        if row is None:
            return
        self.record_updated.emit(rec.id)
        old = self.records[row]
        if (old.width, old.height, old.readable) != (rec.width, rec.height, rec.readable):
            self.thumbnails.forget(rec.id)  # the file changed, or became (un)readable
        self.records[row] = rec
        idx = self.index(row)
        self.dataChanged.emit(idx, idx)

    def set_stretch(self, on: bool) -> None:
        """Thumbnails as the canvas shows images (auto contrast or as stored); rows on screen ask again."""
        if on != self.thumbnails.stretch:
            self.thumbnails.set_stretch(on)
            if self.records:
                self.dataChanged.emit(self.index(0), self.index(len(self.records) - 1),
                                      [Qt.ItemDataRole.DecorationRole])

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


class ImageFilter(QSortFilterProxyModel):
    """Status, a file-name substring and a set of image ids (what they hold), all at once.

    Shown only while a filter is set: its ``filterAcceptsRow`` is Python, and each of its calls
    waits for the GIL while the folder is read on another thread (~20 ms for a streamed chunk of
    5,000 rows). Unfiltered, the list shows a plain proxy that accepts rows in C++.
    """

    def __init__(self, parent=None):
        super().__init__(parent)
        self.status, self.text, self.ids = "", "", None

    def filterAcceptsRow(self, row, parent):  # noqa: N802
        rec = self.sourceModel().records[row]
        return ((not self.status or rec.status.value == self.status)
                and (not self.text or self.text in rec.path.lower())
                and (self.ids is None or rec.id in self.ids))

    @property
    def active(self) -> bool:
        return bool(self.status or self.text or self.ids is not None)

    def refilter(self) -> None:
        self.beginFilterChange()  # Qt 6.9's replacement for invalidateFilter()
        self.endFilterChange(QSortFilterProxyModel.Direction.Rows)


class ImageListWidget(QWidget):
    """List plus status filter and order; emits ``image_chosen(image_id)``."""

    image_chosen = Signal(int)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.model = ImageListModel(self)
        self.filtered = ImageFilter(self)  # shown while a filter is set
        self.plain = QSortFilterProxyModel(self)  # shown otherwise: rows accepted in C++
        for proxy in (self.filtered, self.plain):
            proxy.setSortRole(UNSURE_ROLE)
        self.plain.setSourceModel(self.model)  # the filtered proxy gets it while a filter is set
        # "what it holds" is asked of the project: ids_with(key, image_id=None) -> set of ids
        self.ids_with: Callable[..., set[int]] | None = None
        self.filter = QComboBox()
        self.filter.addItem("All images", "")
        for s in ImageStatus:
            self.filter.addItem(s.value.capitalize(), s.value)
        self.filter.currentIndexChanged.connect(self._on_filter)
        self.content = QComboBox()
        self.content.setToolTip("Only images holding this")
        self.set_categories([])
        self.content.currentIndexChanged.connect(self._on_content)
        self.search = QLineEdit()
        self.search.setPlaceholderText("File name contains…")
        self.search.setClearButtonEnabled(True)
        self.search.textChanged.connect(self._on_search)
        self.count = QLabel("")
        self.count.setStyleSheet("color: #9aa0a6;")
        for proxy in (self.filtered, self.plain):
            for sig in (proxy.rowsInserted, proxy.rowsRemoved, proxy.modelReset, proxy.layoutChanged):
                sig.connect(self._count)
        self.order = QComboBox()
        self.order.setToolTip("Least confident first: the images the model is most unsure about "
                              "(its predictions' score entropy) come first, and Next follows them")
        for text, value in ORDERS:
            self.order.addItem(text, value)
        self.order.currentIndexChanged.connect(self._on_order)
        self.view = QListView()
        self.view.setModel(self.plain)
        self.view.setUniformItemSizes(True)  # keeps 10,000+ rows fast
        # Lay rows out 1,000 at a time between events: a single-pass layout of 100,000 rows after
        # each streamed chunk held the GUI thread ~70 ms (bench/bench_scale.py).
        self.view.setLayoutMode(QListView.LayoutMode.Batched)
        self.view.setBatchSize(1000)
        self.view.setIconSize(QSize(THUMB_SIZE, THUMB_SIZE))
        self.view.selectionModel().currentChanged.connect(self._on_current)
        self.model.record_updated.connect(self._content_changed)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        row = QHBoxLayout()
        row.addWidget(self.filter, 1)
        row.addWidget(self.order, 1)
        lay.addLayout(row)
        row = QHBoxLayout()
        row.addWidget(self.content, 1)
        row.addWidget(self.search, 1)
        lay.addLayout(row)
        lay.addWidget(self.view)
        lay.addWidget(self.count)

    @property
    def proxy(self) -> QSortFilterProxyModel:
        """The proxy on screen: ``filtered`` while a filter is set, else ``plain``."""
        return self.view.model()

    def _on_filter(self) -> None:
        self.filtered.status = self.filter.currentData() or ""
        self._refilter()

    def _on_search(self, text: str) -> None:
        self.filtered.text = text.strip().lower()
        self._refilter()

    def set_categories(self, categories) -> None:
        """The content filter's choices: anything, predictions, nothing, or one category."""
        current = self.content.currentData()
        self.content.blockSignals(True)
        self.content.clear()
        self.content.addItem("Any content", None)
        self.content.addItem("Has predictions", "predictions")
        self.content.addItem("No instances", "nothing")
        for c in categories:
            self.content.addItem(f"With {c.name}", c.id)
        self.content.setCurrentIndex(max(0, self.content.findData(current)) if current is not None else 0)
        self.content.blockSignals(False)

    def _on_content(self) -> None:
        self.refresh_content()

    def refresh_content(self) -> None:
        """Ask the project again which images hold the chosen content."""
        key = self.content.currentData()
        self.filtered.ids = None if key is None or self.ids_with is None else self.ids_with(key)
        self._refilter()

    def _content_changed(self, image_id: int) -> None:
        """One image's instances changed: only its membership is asked again."""
        key, ids = self.content.currentData(), self.filtered.ids
        if key is None or ids is None or self.ids_with is None:
            return
        if self.ids_with(key, image_id):
            ids.add(image_id)
        else:
            ids.discard(image_id)

    def _refilter(self) -> None:
        active = self.filtered.active
        if active and self.filtered.sourceModel() is None:
            self.filtered.setSourceModel(self.model)
            self._sort(self.filtered)
        elif active:
            self.filtered.refilter()
        want = self.filtered if active else self.plain
        if want is not self.view.model():
            current = self.view.currentIndex()
            image_id = int(current.data(ID_ROLE)) if current.isValid() else None
            self.view.setModel(want)  # a new selection model comes with it
            self.view.selectionModel().currentChanged.connect(self._on_current)
            if image_id is not None:
                self.select(image_id)
        if not active and self.filtered.sourceModel() is not None:
            self.filtered.setSourceModel(None)  # unseen, it would still filter every streamed row
        self._count()

    def _count(self, *_args) -> None:
        shown, total = self.proxy.rowCount(), self.model.rowCount()
        self.count.setText(n_images(total) if shown == total else f"{shown:,} of {n_images(total)}")

    def _sort(self, proxy: QSortFilterProxyModel) -> None:
        if self.order.currentData():
            proxy.sort(0, Qt.SortOrder.AscendingOrder)
        else:
            proxy.sort(-1)  # the folder's order

    def _on_order(self) -> None:
        for proxy in (self.filtered, self.plain):
            if proxy.sourceModel() is not None:
                self._sort(proxy)
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
