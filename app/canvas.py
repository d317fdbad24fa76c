"""The image canvas: a QGraphicsView with zoom to cursor, fit, pan, and the instances drawn on it."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QBrush, QColor, QFont, QImage, QPainter, QPen, QPixmap
from PySide6.QtWidgets import (QGraphicsEllipseItem, QGraphicsItem, QGraphicsLineItem,
                               QGraphicsPixmapItem, QGraphicsRectItem, QGraphicsScene,
                               QGraphicsSimpleTextItem, QGraphicsView)

from detector import masks as M
from detector.domain import Category, Instance


def qimage_from_rgb(rgb: np.ndarray) -> QImage:
    h, w, _ = rgb.shape
    return QImage(np.ascontiguousarray(rgb).data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()


def mask_image(rle: dict, color: QColor, alpha: int) -> tuple[QImage, int, int]:
    """The mask cropped to its bounding box as a premultiplied ARGB image, plus its offset."""
    m = M.decode(rle)
    ys, xs = np.nonzero(m)
    if len(xs) == 0:
        return QImage(), 0, 0
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    crop = m[y0:y1, x0:x1].astype(bool)
    argb = np.zeros(crop.shape + (4,), dtype=np.uint8)
    a = alpha / 255.0
    argb[crop] = (int(color.blue() * a), int(color.green() * a), int(color.red() * a), alpha)
    h, w = crop.shape
    img = QImage(argb.data, w, h, 4 * w, QImage.Format.Format_ARGB32_Premultiplied).copy()
    return img, int(x0), int(y0)


class InstanceItem(QGraphicsRectItem):
    """One instance: its box (this item), mask, keypoints with skeleton, and a label."""

    def __init__(self, inst: Instance, category: Category | None, mask_alpha: int = 110):
        x1, y1, x2, y2 = inst.box
        super().__init__(QRectF(x1, y1, x2 - x1, y2 - y1))
        self.instance = inst
        color = QColor(category.color if category else "#ffffff")
        self.color = color
        dashed = not inst.touched_by_person
        pen = QPen(color, 2)
        pen.setCosmetic(True)
        if dashed:
            pen.setStyle(Qt.PenStyle.DashLine)
        self.setPen(pen)
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemIsSelectable, True)
        self.setAcceptHoverEvents(True)
        self.setZValue(2)
        if inst.mask is not None:
            img, ox, oy = mask_image(inst.mask, color, mask_alpha)
            if not img.isNull():
                self.mask_item = QGraphicsPixmapItem(QPixmap.fromImage(img))
                self.mask_item.setOffset(ox, oy)
                self.mask_item.setZValue(1)
        label = category.name if category else "?"
        if inst.score is not None:
            label += f" {inst.score:.2f}"
        text = QGraphicsSimpleTextItem(label, self)
        text.setBrush(QBrush(QColor("white")))
        f = QFont()
        f.setPointSizeF(8)
        text.setFont(f)
        text.setFlag(QGraphicsItem.GraphicsItemFlag.ItemIgnoresTransformations, True)
        text.setPos(x1, y1)
        bg = QGraphicsRectItem(text.boundingRect(), text)
        bg.setBrush(QBrush(color.darker(130)))
        bg.setPen(QPen(Qt.PenStyle.NoPen))
        bg.setFlag(QGraphicsItem.GraphicsItemFlag.ItemStacksBehindParent, True)
        self.keypoint_items: list[QGraphicsEllipseItem] = []
        if category and category.keypoints and inst.keypoints:
            for a, b in category.skeleton:
                if a - 1 < len(inst.keypoints) and b - 1 < len(inst.keypoints):
                    pa, pb = inst.keypoints[a - 1], inst.keypoints[b - 1]
                    if pa[2] > 0 and pb[2] > 0:
                        line = QGraphicsLineItem(pa[0], pa[1], pb[0], pb[1], self)
                        lp = QPen(color.lighter(140), 1.5)
                        lp.setCosmetic(True)
                        line.setPen(lp)
            for x, y, v in inst.keypoints:
                if v == 0:
                    continue
                dot = QGraphicsEllipseItem(-4, -4, 8, 8, self)
                dot.setPos(x, y)
                dot.setFlag(QGraphicsItem.GraphicsItemFlag.ItemIgnoresTransformations, True)
                dot.setBrush(QBrush(color if v == 2 else QColor(0, 0, 0, 0)))
                dot.setPen(QPen(QColor("white"), 1))
                self.keypoint_items.append(dot)

    mask_item: QGraphicsPixmapItem | None = None

    def hoverEnterEvent(self, event):  # noqa: N802 (Qt naming)
        p = self.pen()
        p.setWidth(3)
        self.setPen(p)
        super().hoverEnterEvent(event)

    def hoverLeaveEvent(self, event):  # noqa: N802
        p = self.pen()
        p.setWidth(2)
        self.setPen(p)
        super().hoverLeaveEvent(event)


class ImageCanvas(QGraphicsView):
    """Shows one image and its instances; wheel zooms to the cursor, space/middle-drag pans."""

    selection_changed = Signal(list)  # instance ids

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setScene(QGraphicsScene(self))
        self.setRenderHints(QPainter.RenderHint.Antialiasing | QPainter.RenderHint.SmoothPixmapTransform)
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorUnderMouse)
        self.setDragMode(QGraphicsView.DragMode.RubberBandDrag)
        self.setBackgroundBrush(QBrush(QColor("#202124")))
        self._pixmap_item: QGraphicsPixmapItem | None = None
        self.items_by_id: dict[int, InstanceItem] = {}
        self.mask_alpha = 110
        self.min_score = 0.0
        self._panning = False
        self.scene().selectionChanged.connect(self._on_selection)

    @property
    def has_image(self) -> bool:
        return self._pixmap_item is not None

    def set_image(self, rgb: np.ndarray) -> None:
        self.scene().clear()
        self.items_by_id.clear()
        self._pixmap_item = self.scene().addPixmap(QPixmap.fromImage(qimage_from_rgb(rgb)))
        self._pixmap_item.setZValue(0)
        self.scene().setSceneRect(QRectF(self._pixmap_item.pixmap().rect()))
        self.fit()

    def set_instances(self, instances: list[Instance], categories: dict[int, Category]) -> None:
        for item in list(self.items_by_id.values()):
            if item.mask_item is not None:
                self.scene().removeItem(item.mask_item)
            self.scene().removeItem(item)
        self.items_by_id.clear()
        for inst in instances:
            item = InstanceItem(inst, categories.get(inst.category_id), self.mask_alpha)
            self.scene().addItem(item)
            if item.mask_item is not None:
                self.scene().addItem(item.mask_item)
            self.items_by_id[inst.id] = item
        self.apply_threshold(self.min_score)

    def apply_threshold(self, min_score: float) -> None:
        """Hide untouched predictions below ``min_score``; no model run involved."""
        self.min_score = min_score
        for item in self.items_by_id.values():
            inst = item.instance
            visible = inst.touched_by_person or inst.score is None or inst.score >= min_score
            item.setVisible(visible)
            if item.mask_item is not None:
                item.mask_item.setVisible(visible)

    def fit(self) -> None:
        if self._pixmap_item is not None:
            self.fitInView(self._pixmap_item, Qt.AspectRatioMode.KeepAspectRatio)

    def actual_size(self) -> None:
        self.resetTransform()

    def wheelEvent(self, event):  # noqa: N802
        factor = 1.25 if event.angleDelta().y() > 0 else 0.8
        self.scale(factor, factor)

    def mousePressEvent(self, event):  # noqa: N802
        if event.button() == Qt.MouseButton.MiddleButton:
            self._panning = True
            self._pan_from = event.position()
            self.setCursor(Qt.CursorShape.ClosedHandCursor)
            return
        super().mousePressEvent(event)

    def mouseMoveEvent(self, event):  # noqa: N802
        if self._panning:
            d = event.position() - self._pan_from
            self._pan_from = event.position()
            self.horizontalScrollBar().setValue(self.horizontalScrollBar().value() - int(d.x()))
            self.verticalScrollBar().setValue(self.verticalScrollBar().value() - int(d.y()))
            return
        super().mouseMoveEvent(event)

    def mouseReleaseEvent(self, event):  # noqa: N802
        if self._panning and event.button() == Qt.MouseButton.MiddleButton:
            self._panning = False
            self.unsetCursor()
            return
        super().mouseReleaseEvent(event)

    def keyPressEvent(self, event):  # noqa: N802
        if event.key() == Qt.Key.Key_Space and not event.isAutoRepeat():
            self.setDragMode(QGraphicsView.DragMode.ScrollHandDrag)
        super().keyPressEvent(event)

    def keyReleaseEvent(self, event):  # noqa: N802
        if event.key() == Qt.Key.Key_Space and not event.isAutoRepeat():
            self.setDragMode(QGraphicsView.DragMode.RubberBandDrag)
        super().keyReleaseEvent(event)

    def _on_selection(self) -> None:
        try:
            ids = [i.instance.id for i in self.scene().selectedItems() if isinstance(i, InstanceItem)]
        except RuntimeError:  # scene being torn down
            return
        self.selection_changed.emit(ids)

    def select_ids(self, ids: list[int]) -> None:
        self.scene().blockSignals(True)
        for iid, item in self.items_by_id.items():
            item.setSelected(iid in ids)
        self.scene().blockSignals(False)

    def scene_point(self, pos) -> QPointF:
        return self.mapToScene(pos)
