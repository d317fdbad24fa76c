"""The image canvas: a QGraphicsView that draws instances and turns mouse gestures into edits.

Gestures never touch the project: on mouse release the canvas emits the finished edit
(``instance_changed(before, after)``, ``box_drawn``, ``polygon_drawn``, ``mask_painted``) and the
window turns it into one undo command. A drag is one step.
"""

from __future__ import annotations

import math

import numpy as np
from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import (QBrush, QColor, QPainter, QPainterPath, QPen, QPixmap,
                           QPolygonF)
from PySide6.QtWidgets import (QGraphicsPathItem, QGraphicsPixmapItem, QGraphicsScene, QGraphicsView)

from detector.domain import Category, Instance

from .canvas_tools import Tool, tool_handlers  # noqa: F401 (Tool is imported from here too)
from .instance_item import InstanceItem, qimage_from_rgb
from .view_state import ViewState

HANDLE_PX = 7  # grab distance for handles and keypoints, in screen pixels


class ImageCanvas(QGraphicsView):
    """Shows one image and its instances; wheel zooms to the cursor, space/middle-drag pans."""

    selection_changed = Signal(list)  # instance ids
    instance_changed = Signal(object, object)  # before, after (move, resize, keypoints, mask)
    box_drawn = Signal(tuple)  # (x1, y1, x2, y2), a new instance
    object_clicked = Signal(float, float)  # a click with the Click tool: a new instance there
    polygon_drawn = Signal(list)  # [(x, y), ...], a new masked instance
    mask_painted = Signal(object)  # bool H x W: brush on nothing selected makes a new instance
    keypoint_picked = Signal(int, int)  # instance id, keypoint index (for V and 'next missing')
    tool_changed = Signal(str)
    point_clicked = Signal(float, float)  # a click with the keypoint tool
    space_tapped = Signal()  # Space pressed and released without panning: mark reviewed

    def __init__(self, parent=None, view: ViewState | None = None):
        super().__init__(parent)
        self.view = view if view is not None else ViewState()  # slider, hidden ids, brush: shared
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
        self.tool = Tool.SELECT
        self.tools = tool_handlers()  # Tool -> what its press / move / release do (canvas_tools.py)
        self._panning = False
        self.drag: dict | None = None
        self.polygon: list[tuple[float, float]] = []
        self.overlay: QGraphicsPathItem | None = None
        self.active_keypoint: tuple[int, int] | None = None
        self._space_down = False
        self._space_dragged = False
        self.fitted = False  # the image is shown whole and stays so as the canvas is resized
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
        self.overlay = None
        self.active_keypoint = None
        self._pixmap_item = self.scene().addPixmap(QPixmap.fromImage(qimage_from_rgb(rgb)))
        self._pixmap_item.setZValue(0)
        self.image_size = rgb.shape[:2]
        self.scene().setSceneRect(QRectF(self._pixmap_item.pixmap().rect()))
        self.fit()

    def set_pixels(self, rgb: np.ndarray) -> bool:
        """The same image drawn anew (auto contrast on or off): zoom, instances and any gesture
        stay. False (nothing changed) when no image of that size is shown."""
        if self._pixmap_item is None or tuple(rgb.shape[:2]) != tuple(self.image_size):
            return False
        self._pixmap_item.setPixmap(QPixmap.fromImage(qimage_from_rgb(rgb)))
        return True

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

    def apply_threshold(self, min_score: float) -> None:
        """Hide untouched predictions below ``min_score``; no model run involved."""
        self.view.min_score = min_score
        self.apply_visibility()

    def apply_visibility(self) -> None:
        """Show what the view state says is shown (after a slider or a tick box changed)."""
        for item in self.items_by_id.values():
            item.setVisible(self.view.is_shown(item.instance))

    def set_mask_alpha(self, alpha: int, categories: dict[int, Category]) -> None:
        self.mask_alpha = alpha
        self.set_instances([i.instance for i in self.items_by_id.values()], categories)

    # -- view -------------------------------------------------------------------------------
    def fit(self) -> None:
        """Show the whole image; it stays whole when the canvas is resized (a dock or a notice
        opening), until the person zooms."""
        if self._pixmap_item is not None:
            self.fitInView(self._pixmap_item, Qt.AspectRatioMode.KeepAspectRatio)
            self.fitted = True

    def actual_size(self) -> None:
        self.resetTransform()
        self.fitted = False

    def scale(self, sx: float, sy: float) -> None:
        """A zoom of the person's (wheel, or any caller): the scale is kept from now on."""
        super().scale(sx, sy)
        self.fitted = False

    def image_px_per_screen_px(self) -> int:
        """Whole image pixels one screen pixel spans at this zoom, at least 1: a step that stays
        visible on a large photo seen zoomed out (Grow / Shrink mask)."""
        return max(1, int(1.0 / max(1e-6, self.transform().m11()) + 1e-6))

    def wheelEvent(self, event):  # noqa: N802
        factor = 1.25 if event.angleDelta().y() > 0 else 0.8
        self.scale(factor, factor)

    def resizeEvent(self, event):  # noqa: N802
        super().resizeEvent(event)
        if self.fitted:
            self.fit()

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
        if event.button() == Qt.MouseButton.MiddleButton:
            self._panning = True
            self._pan_from = event.position()
            self.setCursor(Qt.CursorShape.ClosedHandCursor)
            return
        if self.dragMode() == QGraphicsView.DragMode.ScrollHandDrag or \
                event.button() != Qt.MouseButton.LeftButton or not self.has_image:
            return super().mousePressEvent(event)
        p = self.mapToScene(event.position().toPoint())
        if not self.tools[self.tool].press(self, p, *self._clamp(p), event.modifiers()):
            super().mousePressEvent(event)

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
        if self.drag is None:
            self.tools[self.tool].hover(self, p, x, y)
            return super().mouseMoveEvent(event)
        self.drag["to"] = (x, y)
        self.tools[self.tool].move(self, x, y)

    def mouseReleaseEvent(self, event):  # noqa: N802
        if self._panning and event.button() == Qt.MouseButton.MiddleButton:
            self._panning = False
            self.unsetCursor()
            return
        drag, self.drag = self.drag, None
        if drag is None or event.button() != Qt.MouseButton.LeftButton:
            return super().mouseReleaseEvent(event)
        self.tools[self.tool].release(self, drag)

    def mouseDoubleClickEvent(self, event):  # noqa: N802
        if self.tool is Tool.POLYGON:
            self.finish_polygon()
            return
        super().mouseDoubleClickEvent(event)

    def finish_polygon(self) -> None:
        pts, self.polygon = self.polygon, []
        self.remove_overlay()
        # A double click adds the same point twice: drop repeats.
        clean = [p for i, p in enumerate(pts) if i == 0 or p != pts[i - 1]]
        if len(clean) >= 3:
            self.polygon_drawn.emit(clean)

    def pen(self) -> QPen:
        pen = QPen(QColor("#fdd663"), 2)
        pen.setCosmetic(True)
        return pen

    def draw_polygon(self, cursor) -> None:
        if self.overlay is None:
            self.overlay = self.scene().addPath(QPainterPath(), self.pen())
            self.overlay.setZValue(5)
        pts = self.polygon + ([cursor] if cursor else [])
        self.overlay.setPath(_poly_path(pts))

    def remove_overlay(self) -> None:
        if self.overlay is not None:
            self.scene().removeItem(self.overlay)
            self.overlay = None

    def _cancel_gesture(self) -> None:
        self.drag = None
        self.polygon = []
        if self.overlay is not None and self.overlay.scene() is self.scene():
            self.remove_overlay()
        self.overlay = None

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
        if event.key() == Qt.Key.Key_Escape and (self.polygon or self.drag):
            self._cancel_gesture()
            return
        elif event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and self.polygon:
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
