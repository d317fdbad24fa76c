"""The image canvas: a QGraphicsView that draws instances and turns mouse gestures into edits.

Gestures never touch the project: on mouse release the canvas emits the finished edit
(``instance_changed(before, after)``, ``box_drawn``, ``polygon_drawn``, ``mask_painted``) and the
window turns it into one undo command. A drag is one step.
"""

from __future__ import annotations

import enum
import math

import numpy as np
from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import (QBrush, QColor, QFont, QImage, QPainter, QPainterPath, QPen, QPixmap,
                           QPolygonF)
from PySide6.QtWidgets import (QGraphicsEllipseItem, QGraphicsItem, QGraphicsLineItem,
                               QGraphicsPathItem, QGraphicsPixmapItem, QGraphicsRectItem,
                               QGraphicsScene, QGraphicsSimpleTextItem, QGraphicsView)

from detector import masks as M
from detector.domain import Category, Instance

HANDLE_PX = 7  # grab distance for handles and keypoints, in screen pixels


class Tool(str, enum.Enum):
    SELECT = "select"
    BOX = "box"
    POLYGON = "polygon"
    BRUSH = "brush"
    ERASER = "eraser"
    KEYPOINT = "keypoint"  # each click places the selected instance's next missing keypoint


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


def disc_mask(shape: tuple[int, int], points: list[tuple[float, float]], radius: float) -> np.ndarray:
    """Pixels within ``radius`` of a stroke through ``points`` (a brush stroke), as bool H x W."""
    h, w = shape
    out = np.zeros((h, w), dtype=bool)
    if not points:
        return out
    pts = [points[0]]
    for p in points[1:]:  # fill gaps between mouse samples
        q = pts[-1]
        n = int(math.hypot(p[0] - q[0], p[1] - q[1]) / max(1.0, radius / 2)) + 1
        pts += [(q[0] + (p[0] - q[0]) * t / n, q[1] + (p[1] - q[1]) * t / n) for t in range(1, n + 1)]
    r = int(math.ceil(radius))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    disc = (xx ** 2 + yy ** 2) <= radius ** 2
    for x, y in pts:
        cx, cy = int(round(x - 0.5)), int(round(y - 0.5))
        x0, y0 = max(0, cx - r), max(0, cy - r)
        x1, y1 = min(w, cx + r + 1), min(h, cy + r + 1)
        if x0 < x1 and y0 < y1:
            out[y0:y1, x0:x1] |= disc[y0 - (cy - r):y1 - (cy - r), x0 - (cx - r):x1 - (cx - r)]
    return out


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


class ImageCanvas(QGraphicsView):
    """Shows one image and its instances; wheel zooms to the cursor, space/middle-drag pans."""

    selection_changed = Signal(list)  # instance ids
    instance_changed = Signal(object, object)  # before, after (move, resize, keypoints, mask)
    box_drawn = Signal(tuple)  # (x1, y1, x2, y2), a new instance
    polygon_drawn = Signal(list)  # [(x, y), ...], a new masked instance
    mask_painted = Signal(object)  # bool H x W: brush on nothing selected makes a new instance
    keypoint_picked = Signal(int, int)  # instance id, keypoint index (for V and 'next missing')
    tool_changed = Signal(str)
    point_clicked = Signal(float, float)  # a click with the keypoint tool
    space_tapped = Signal()  # Space pressed and released without panning: mark reviewed

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setScene(QGraphicsScene(self))
        self.setRenderHints(QPainter.RenderHint.Antialiasing | QPainter.RenderHint.SmoothPixmapTransform)
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorUnderMouse)
        self.setDragMode(QGraphicsView.DragMode.RubberBandDrag)
        self.setBackgroundBrush(QBrush(QColor("#202124")))
        self.setMouseTracking(True)
        self._pixmap_item: QGraphicsPixmapItem | None = None
        self.image_size: tuple[int, int] = (0, 0)  # (h, w)
        self.items_by_id: dict[int, InstanceItem] = {}
        self.mask_alpha = 110
        self.min_score = 0.0
        self.hidden_ids: set[int] = set()
        self.hidden_categories: set[int] = set()
        self.tool = Tool.SELECT
        self.brush_radius = 8.0
        self._panning = False
        self._drag: dict | None = None
        self._polygon: list[tuple[float, float]] = []
        self._overlay: QGraphicsPathItem | None = None
        self.active_keypoint: tuple[int, int] | None = None
        self._space_down = False
        self._space_dragged = False
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.scene().selectionChanged.connect(self._on_selection)

    # -- content ----------------------------------------------------------------------------
    @property
    def has_image(self) -> bool:
        return self._pixmap_item is not None

    def set_image(self, rgb: np.ndarray) -> None:
        self._cancel_gesture()
        self.scene().clear()
        self.items_by_id.clear()
        self._overlay = None
        self.active_keypoint = None
        self._pixmap_item = self.scene().addPixmap(QPixmap.fromImage(qimage_from_rgb(rgb)))
        self._pixmap_item.setZValue(0)
        self.image_size = rgb.shape[:2]
        self.scene().setSceneRect(QRectF(self._pixmap_item.pixmap().rect()))
        self.fit()

    def set_instances(self, instances: list[Instance], categories: dict[int, Category]) -> None:
        keep = set(self.selected_ids())
        self.scene().blockSignals(True)
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
            item.setSelected(inst.id in keep)
        self.scene().blockSignals(False)
        self.apply_visibility()
        self._on_selection()

    def is_shown(self, inst: Instance) -> bool:
        if inst.id in self.hidden_ids or inst.category_id in self.hidden_categories:
            return False
        return inst.touched_by_person or inst.score is None or inst.score >= self.min_score

    def apply_threshold(self, min_score: float) -> None:
        """Hide untouched predictions below ``min_score``; no model run involved."""
        self.min_score = min_score
        self.apply_visibility()

    def apply_visibility(self) -> None:
        for item in self.items_by_id.values():
            item.setVisible(self.is_shown(item.instance))

    def set_mask_alpha(self, alpha: int, categories: dict[int, Category]) -> None:
        self.mask_alpha = alpha
        self.set_instances([i.instance for i in self.items_by_id.values()], categories)

    # -- view -------------------------------------------------------------------------------
    def fit(self) -> None:
        if self._pixmap_item is not None:
            self.fitInView(self._pixmap_item, Qt.AspectRatioMode.KeepAspectRatio)

    def actual_size(self) -> None:
        self.resetTransform()

    def wheelEvent(self, event):  # noqa: N802
        factor = 1.25 if event.angleDelta().y() > 0 else 0.8
        self.scale(factor, factor)

    def set_tool(self, tool: Tool) -> None:
        self._cancel_gesture()
        self.tool = Tool(tool)
        self.setDragMode(self._default_drag_mode())
        self.setCursor(Qt.CursorShape.ArrowCursor if self.tool is Tool.SELECT
                       else Qt.CursorShape.CrossCursor)
        self.tool_changed.emit(self.tool.value)

    # -- selection --------------------------------------------------------------------------
    def selected_ids(self) -> list[int]:
        try:
            return [i.instance.id for i in self.scene().selectedItems() if isinstance(i, InstanceItem)]
        except RuntimeError:  # scene being torn down
            return []

    def _on_selection(self) -> None:
        self.selection_changed.emit(self.selected_ids())

    def select_ids(self, ids: list[int]) -> None:
        self.scene().blockSignals(True)
        for iid, item in self.items_by_id.items():
            item.setSelected(iid in ids)
        self.scene().blockSignals(False)
        self._on_selection()

    # -- hit testing ------------------------------------------------------------------------
    def _tol(self) -> float:
        return HANDLE_PX / max(1e-6, self.transform().m11())

    def _visible_items(self) -> list[InstanceItem]:
        return [i for i in self.items_by_id.values() if i.isVisible()]

    def keypoint_at(self, p: QPointF) -> tuple[int, int] | None:
        tol = self._tol()
        best = None
        for item in self._visible_items():
            for k, (x, y, v) in enumerate(item.instance.keypoints):
                if v > 0:
                    d = math.hypot(x - p.x(), y - p.y())
                    if d <= tol and (best is None or d < best[0]):
                        best = (d, item.instance.id, k)
        return None if best is None else (best[1], best[2])

    def handle_at(self, p: QPointF) -> tuple[int, str] | None:
        """(instance id, handle) for a corner or edge of a selected box near ``p``."""
        tol = self._tol()
        for iid in self.selected_ids():
            item = self.items_by_id[iid]
            x1, y1, x2, y2 = item.instance.box
            near_x = "l" if abs(p.x() - x1) <= tol else "r" if abs(p.x() - x2) <= tol else ""
            near_y = "t" if abs(p.y() - y1) <= tol else "b" if abs(p.y() - y2) <= tol else ""
            inside_x = x1 - tol <= p.x() <= x2 + tol
            inside_y = y1 - tol <= p.y() <= y2 + tol
            if (near_x and inside_y) or (near_y and inside_x):
                return iid, near_y + near_x
        return None

    def instance_at(self, p: QPointF) -> int | None:
        """The smallest visible instance whose box (or mask) contains ``p``."""
        hits = []
        for item in self._visible_items():
            x1, y1, x2, y2 = item.instance.box
            if x1 <= p.x() <= x2 and y1 <= p.y() <= y2:
                hits.append(((x2 - x1) * (y2 - y1), item.instance.id))
        return min(hits)[1] if hits else None

    # -- gestures ---------------------------------------------------------------------------
    def _clamp(self, p: QPointF) -> tuple[float, float]:
        h, w = self.image_size
        return (min(max(p.x(), 0.0), float(w)), min(max(p.y(), 0.0), float(h)))

    def mousePressEvent(self, event):  # noqa: N802
        if event.button() == Qt.MouseButton.MiddleButton or \
                (self.dragMode() == QGraphicsView.DragMode.ScrollHandDrag):
            if event.button() == Qt.MouseButton.MiddleButton:
                self._panning = True
                self._pan_from = event.position()
                self.setCursor(Qt.CursorShape.ClosedHandCursor)
                return
            return super().mousePressEvent(event)
        if event.button() != Qt.MouseButton.LeftButton or not self.has_image:
            return super().mousePressEvent(event)
        p = self.mapToScene(event.position().toPoint())
        x, y = self._clamp(p)
        if self.tool is Tool.SELECT:
            kp = self.keypoint_at(p)
            if kp is not None:
                self.active_keypoint = kp
                self.keypoint_picked.emit(*kp)
                self._drag = {"kind": "keypoint", "id": kp[0], "k": kp[1], "from": (x, y)}
                return
            handle = self.handle_at(p)
            if handle is not None:
                self._drag = {"kind": "resize", "id": handle[0], "handle": handle[1], "from": (x, y)}
                return
            iid = self.instance_at(p)
            if iid is not None:
                mods = event.modifiers()
                item = self.items_by_id[iid]
                if mods & Qt.KeyboardModifier.ControlModifier:
                    item.setSelected(not item.isSelected())
                    return
                if not item.isSelected():
                    self.select_ids([iid])
                self._drag = {"kind": "move", "id": iid, "from": (x, y)}
                return
            self.select_ids([])
            return super().mousePressEvent(event)  # rubber band
        if self.tool is Tool.KEYPOINT:
            self.point_clicked.emit(x, y)
            return
        if self.tool is Tool.BOX:
            self._drag = {"kind": "box", "from": (x, y)}
            self._overlay = self.scene().addPath(QPainterPath(), self._pen())
            return
        if self.tool is Tool.POLYGON:
            self._polygon.append((x, y))
            self._draw_polygon(None)
            return
        if self.tool in (Tool.BRUSH, Tool.ERASER):
            self._drag = {"kind": "paint", "points": [(x, y)]}
            self._overlay = self.scene().addPath(QPainterPath(), QPen(Qt.PenStyle.NoPen))
            self._overlay.setBrush(QBrush(QColor(255, 255, 255, 90) if self.tool is Tool.BRUSH
                                          else QColor(0, 0, 0, 120)))
            self._overlay.setZValue(5)
            self._paint_preview()
            return

    def mouseMoveEvent(self, event):  # noqa: N802
        if self._space_down and event.buttons():
            self._space_dragged = True
        if self._panning:
            d = event.position() - self._pan_from
            self._pan_from = event.position()
            self.horizontalScrollBar().setValue(self.horizontalScrollBar().value() - int(d.x()))
            self.verticalScrollBar().setValue(self.verticalScrollBar().value() - int(d.y()))
            return
        p = self.mapToScene(event.position().toPoint())
        x, y = self._clamp(p)
        drag = self._drag
        if drag is None:
            if self.tool is Tool.POLYGON and self._polygon:
                self._draw_polygon((x, y))
            elif self.tool is Tool.SELECT:
                h = self.handle_at(p)
                shape = {"tl": Qt.CursorShape.SizeFDiagCursor, "br": Qt.CursorShape.SizeFDiagCursor,
                         "tr": Qt.CursorShape.SizeBDiagCursor, "bl": Qt.CursorShape.SizeBDiagCursor,
                         "l": Qt.CursorShape.SizeHorCursor, "r": Qt.CursorShape.SizeHorCursor,
                         "t": Qt.CursorShape.SizeVerCursor, "b": Qt.CursorShape.SizeVerCursor}
                self.viewport().setCursor(shape.get(h[1], Qt.CursorShape.ArrowCursor) if h
                                          else Qt.CursorShape.PointingHandCursor if self.keypoint_at(p)
                                          else Qt.CursorShape.ArrowCursor)
            return super().mouseMoveEvent(event)
        drag["to"] = (x, y)
        kind = drag["kind"]
        if kind in ("move", "resize", "keypoint"):
            item = self.items_by_id.get(drag["id"])
            if item is None:
                return
            after = self._dragged(drag)
            if kind == "keypoint":
                item.set_keypoints(after.keypoints)
            else:
                item.set_box(after.box)
                if kind == "move" and item.mask_item is not None:
                    dx, dy = x - drag["from"][0], y - drag["from"][1]
                    item.mask_item.setPos(dx, dy)
                if kind == "move":
                    item.set_keypoints(after.keypoints)
        elif kind == "box":
            x0, y0 = drag["from"]
            path = QPainterPath()
            path.addRect(QRectF(QPointF(x0, y0), QPointF(x, y)).normalized())
            self._overlay.setPath(path)
        elif kind == "paint":
            drag["points"].append((x, y))
            self._paint_preview()

    def _dragged(self, drag: dict) -> Instance:
        """The instance as the drag so far would leave it."""
        inst = self.items_by_id[drag["id"]].instance
        (fx, fy), (tx, ty) = drag["from"], drag.get("to", drag["from"])
        dx, dy = tx - fx, ty - fy
        if drag["kind"] == "keypoint":
            kps = list(inst.keypoints)
            x, y, v = kps[drag["k"]]
            kps[drag["k"]] = (round(x + dx, 2), round(y + dy, 2), v)
            return inst.with_(keypoints=tuple(kps))
        x1, y1, x2, y2 = inst.box
        if drag["kind"] == "move":
            h, w = self.image_size
            dx = min(max(dx, -x1), w - x2)
            dy = min(max(dy, -y1), h - y2)
            mask = inst.mask
            if mask is not None and (dx or dy) and drag.get("done"):
                mask = M.encode(_shift(M.decode(mask), int(round(dx)), int(round(dy))))
            kps = tuple((round(kx + dx, 2), round(ky + dy, 2), v) if v else (kx, ky, v)
                        for kx, ky, v in inst.keypoints)
            return inst.with_(box=(x1 + dx, y1 + dy, x2 + dx, y2 + dy), mask=mask, keypoints=kps)
        handle = drag["handle"]
        if "l" in handle:
            x1 = tx
        if "r" in handle:
            x2 = tx
        if "t" in handle:
            y1 = ty
        if "b" in handle:
            y2 = ty
        x1, x2 = sorted((x1, x2))
        y1, y2 = sorted((y1, y2))
        return inst.with_(box=(round(x1, 2), round(y1, 2), round(x2, 2), round(y2, 2)))

    def mouseReleaseEvent(self, event):  # noqa: N802
        if self._panning and event.button() == Qt.MouseButton.MiddleButton:
            self._panning = False
            self.unsetCursor()
            return
        drag, self._drag = self._drag, None
        if drag is None or event.button() != Qt.MouseButton.LeftButton:
            return super().mouseReleaseEvent(event)
        kind = drag["kind"]
        if kind in ("move", "resize", "keypoint"):
            if "to" not in drag or drag["to"] == drag["from"] or drag["id"] not in self.items_by_id:
                return
            drag["done"] = True
            before = self.items_by_id[drag["id"]].instance
            after = self._dragged(drag)
            if kind == "resize" and (after.box[2] - after.box[0] < 1 or after.box[3] - after.box[1] < 1):
                self.items_by_id[drag["id"]].set_box(before.box)
                return
            self.instance_changed.emit(before, after)
        elif kind == "box":
            self._remove_overlay()
            (x0, y0), (x1, y1) = drag["from"], drag.get("to", drag["from"])
            box = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
            if box[2] - box[0] >= 2 and box[3] - box[1] >= 2:
                self.box_drawn.emit(tuple(round(v, 2) for v in box))
        elif kind == "paint":
            self._remove_overlay()
            stroke = disc_mask(self.image_size, drag["points"], self.brush_radius)
            sel = self.selected_ids()
            if len(sel) == 1:
                before = self.items_by_id[sel[0]].instance
                h, w = self.image_size
                old = M.decode(before.mask).astype(bool) if before.mask is not None else \
                    M.decode(M.from_box(before.box, h, w)).astype(bool)
                new = old | stroke if self.tool is Tool.BRUSH else old & ~stroke
                if not new.any():
                    return
                rle = M.encode(new)
                box = before.box if before.mask is None and self.tool is Tool.BRUSH else M.bbox_xyxy(rle)
                if self.tool is Tool.BRUSH:
                    bx = M.bbox_xyxy(rle)
                    box = (min(box[0], bx[0]), min(box[1], bx[1]), max(box[2], bx[2]), max(box[3], bx[3]))
                self.instance_changed.emit(before, before.with_(mask=rle, box=box))
            elif self.tool is Tool.BRUSH and stroke.any():
                self.mask_painted.emit(stroke)

    def mouseDoubleClickEvent(self, event):  # noqa: N802
        if self.tool is Tool.POLYGON:
            self.finish_polygon()
            return
        super().mouseDoubleClickEvent(event)

    def finish_polygon(self) -> None:
        pts, self._polygon = self._polygon, []
        self._remove_overlay()
        # A double click adds the same point twice: drop repeats.
        clean = [p for i, p in enumerate(pts) if i == 0 or p != pts[i - 1]]
        if len(clean) >= 3:
            self.polygon_drawn.emit(clean)

    def _pen(self) -> QPen:
        pen = QPen(QColor("#fdd663"), 2)
        pen.setCosmetic(True)
        return pen

    def _draw_polygon(self, cursor) -> None:
        if self._overlay is None:
            self._overlay = self.scene().addPath(QPainterPath(), self._pen())
            self._overlay.setZValue(5)
        pts = self._polygon + ([cursor] if cursor else [])
        self._overlay.setPath(_poly_path(pts))

    def _paint_preview(self) -> None:
        path = QPainterPath()
        r = self.brush_radius
        for x, y in self._drag["points"]:
            path.addEllipse(QPointF(x, y), r, r)
        self._overlay.setPath(path.simplified())

    def _remove_overlay(self) -> None:
        if self._overlay is not None:
            self.scene().removeItem(self._overlay)
            self._overlay = None

    def _cancel_gesture(self) -> None:
        self._drag = None
        self._polygon = []
        if self._overlay is not None and self._overlay.scene() is self.scene():
            self._remove_overlay()
        self._overlay = None

    def _default_drag_mode(self) -> QGraphicsView.DragMode:
        return QGraphicsView.DragMode.RubberBandDrag if self.tool is Tool.SELECT \
            else QGraphicsView.DragMode.NoDrag

    def keyPressEvent(self, event):  # noqa: N802
        if event.key() == Qt.Key.Key_Space:
            # Space held while dragging pans; a tap (no drag) marks the image reviewed.
            if not event.isAutoRepeat():
                self._space_down, self._space_dragged = True, False
                self.setDragMode(QGraphicsView.DragMode.ScrollHandDrag)
            return
        if event.key() == Qt.Key.Key_Escape and (self._polygon or self._drag):
            self._cancel_gesture()
            return
        elif event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and self._polygon:
            self.finish_polygon()
            return
        super().keyPressEvent(event)

    def keyReleaseEvent(self, event):  # noqa: N802
        if event.key() == Qt.Key.Key_Space and not event.isAutoRepeat():
            self._space_down = False
            self.setDragMode(self._default_drag_mode())
            if not self._space_dragged:
                self.space_tapped.emit()
            return
        super().keyReleaseEvent(event)


def _poly_path(pts) -> QPainterPath:
    path = QPainterPath()
    if pts:
        path.addPolygon(QPolygonF([QPointF(x, y) for x, y in pts]))
    return path


def _shift(m: np.ndarray, dx: int, dy: int) -> np.ndarray:
    out = np.zeros_like(m)
    h, w = m.shape
    xs, xd = (0, dx) if dx >= 0 else (-dx, 0)
    ys, yd = (0, dy) if dy >= 0 else (-dy, 0)
    cw, ch = w - abs(dx), h - abs(dy)
    if cw > 0 and ch > 0:
        out[yd:yd + ch, xd:xd + cw] = m[ys:ys + ch, xs:xs + cw]
    return out
