"""How one instance is drawn on the canvas: its box, its mask as a translucent image cropped to
the box, its keypoints and skeleton, and its label."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QBrush, QColor, QFont, QImage, QPen, QPixmap
from PySide6.QtWidgets import (QGraphicsEllipseItem, QGraphicsItem, QGraphicsLineItem, QGraphicsPixmapItem,
                               QGraphicsRectItem, QGraphicsSimpleTextItem)

from detector import masks as M
from detector.domain import Category, Instance


def qimage_from_rgb(rgb: np.ndarray) -> QImage:
    h, w, _ = rgb.shape
    return QImage(np.ascontiguousarray(rgb).data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()


def mask_image(m: np.ndarray, color: QColor, alpha: int) -> tuple[QImage, int, int]:
    """A 0/1 mask cropped to its bounding box as a premultiplied ARGB image, plus its offset."""
    # Row/column any() finds the bounds in two cheap passes (np.nonzero over a full-image mask
    # was 1 ms an instance: 100 predictions stalled the GUI thread for 0.1 s).
    rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
    if len(rows) == 0:
        return QImage(), 0, 0
    x0, x1, y0, y1 = cols[0], cols[-1] + 1, rows[0], rows[-1] + 1
    crop = m[y0:y1, x0:x1].astype(bool)
    argb = np.zeros(crop.shape + (4,), dtype=np.uint8)
    a = alpha / 255.0
    argb[crop] = (int(color.blue() * a), int(color.green() * a), int(color.red() * a), alpha)
    h, w = crop.shape
    img = QImage(argb.data, w, h, 4 * w, QImage.Format.Format_ARGB32_Premultiplied).copy()
    return img, int(x0), int(y0)


class InstanceItem(QGraphicsRectItem):
    """One instance: its box (this item), mask, keypoints with skeleton, and a label."""

    mask_item: QGraphicsPixmapItem | None = None

    def __init__(self, inst: Instance, category: Category | None, mask_alpha: int = 110):
        x1, y1, x2, y2 = inst.box
        super().__init__(QRectF(x1, y1, x2 - x1, y2 - y1))
        self.instance = inst
        self.category = category
        color = QColor(category.color if category else "#ffffff")
        self.color = color
        pen = QPen(color, 2)
        pen.setCosmetic(True)
        if not inst.touched_by_person:
            pen.setStyle(Qt.PenStyle.DashLine)  # a prediction nobody has accepted yet
        self.setPen(pen)
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemIsSelectable, True)
        self.setAcceptHoverEvents(True)
        self.setZValue(2)
        self._mask_alpha = mask_alpha
        self._mask_drawn = False
        if inst.mask is not None:
            # Decoded and drawn when first shown: predictions hidden by the confidence slider
            # (often most of them) cost nothing on the GUI thread.
            self.mask_item = QGraphicsPixmapItem()
            self.mask_item.setZValue(1)
            self.mask_item.setVisible(False)
        label = category.name if category else "?"
        if inst.score is not None and not inst.accepted:
            label += f" {inst.score:.2f}"
        self.text = QGraphicsSimpleTextItem(label, self)
        self.text.setBrush(QBrush(QColor("white")))
        f = QFont()
        f.setPointSizeF(8)
        self.text.setFont(f)
        self.text.setFlag(QGraphicsItem.GraphicsItemFlag.ItemIgnoresTransformations, True)
        self.text.setPos(x1, y1)
        bg = QGraphicsRectItem(self.text.boundingRect(), self.text)
        bg.setBrush(QBrush(color.darker(130)))
        bg.setPen(QPen(Qt.PenStyle.NoPen))
        bg.setFlag(QGraphicsItem.GraphicsItemFlag.ItemStacksBehindParent, True)
        self.keypoint_items: list[QGraphicsEllipseItem | None] = []
        self.skeleton_items: list[tuple[int, int, QGraphicsLineItem]] = []
        if category and category.keypoints and inst.keypoints:
            for a, b in category.skeleton:
                if a - 1 < len(inst.keypoints) and b - 1 < len(inst.keypoints):
                    line = QGraphicsLineItem(self)
                    lp = QPen(color.lighter(140), 1.5)
                    lp.setCosmetic(True)
                    line.setPen(lp)
                    self.skeleton_items.append((a - 1, b - 1, line))
            for _ in inst.keypoints:
                dot = QGraphicsEllipseItem(-4, -4, 8, 8, self)
                dot.setFlag(QGraphicsItem.GraphicsItemFlag.ItemIgnoresTransformations, True)
                dot.setPen(QPen(QColor("white"), 1))
                dot.setZValue(3)
                self.keypoint_items.append(dot)
            self.set_keypoints(inst.keypoints)

    def set_keypoints(self, kps) -> None:
        for dot, (x, y, v) in zip(self.keypoint_items, kps):
            dot.setPos(x, y)
            dot.setVisible(v > 0)
            dot.setBrush(QBrush(self.color if v == 2 else QColor(0, 0, 0, 0)))
        for a, b, line in self.skeleton_items:
            pa, pb = kps[a], kps[b]
            line.setLine(pa[0], pa[1], pb[0], pb[1])
            line.setVisible(pa[2] > 0 and pb[2] > 0)

    def set_box(self, box) -> None:
        x1, y1, x2, y2 = box
        self.setRect(QRectF(x1, y1, x2 - x1, y2 - y1).normalized())
        self.text.setPos(min(x1, x2), min(y1, y2))

    def _draw_mask(self) -> None:
        self._mask_drawn = True
        img, ox, oy = mask_image(M.decode(self.instance.mask), self.color, self._mask_alpha)
        if not img.isNull():
            self.mask_item.setPixmap(QPixmap.fromImage(img))
            self.mask_item.setOffset(ox, oy)

    def setVisible(self, visible: bool) -> None:  # noqa: N802
        super().setVisible(visible)
        if self.mask_item is not None:
            if visible and not self._mask_drawn:
                self._draw_mask()
            self.mask_item.setVisible(visible)

    def hoverEnterEvent(self, event):  # noqa: N802
        p = self.pen()
        p.setWidth(3)
        self.setPen(p)
        super().hoverEnterEvent(event)

    def hoverLeaveEvent(self, event):  # noqa: N802
        p = self.pen()
        p.setWidth(2)
        self.setPen(p)
        super().hoverLeaveEvent(event)
