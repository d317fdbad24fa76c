"""The canvas tools, one class each: what a press, a move and a release do with that tool.

A tool reads the canvas (hit tests, the image size, the selection) and keeps its gesture in
``canvas.drag``; it never touches the project. On release it asks the canvas to emit the finished
edit. ``dragged`` (the geometry of a move, resize or keypoint drag) is a plain function.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QBrush, QColor, QPainterPath, QPen

from detector import masks as M
from detector.domain import Instance

if TYPE_CHECKING:
    from .canvas import ImageCanvas


class Tool(str, enum.Enum):
    SELECT = "select"
    BOX = "box"
    CLICK = "click"
    POLYGON = "polygon"
    BRUSH = "brush"
    ERASER = "eraser"
    KEYPOINT = "keypoint"


_RESIZE_CURSORS = {"tl": Qt.CursorShape.SizeFDiagCursor, "br": Qt.CursorShape.SizeFDiagCursor,
                   "tr": Qt.CursorShape.SizeBDiagCursor, "bl": Qt.CursorShape.SizeBDiagCursor,
                   "l": Qt.CursorShape.SizeHorCursor, "r": Qt.CursorShape.SizeHorCursor,
                   "t": Qt.CursorShape.SizeVerCursor, "b": Qt.CursorShape.SizeVerCursor}


def dragged(inst: Instance, drag: dict, image_size: tuple[int, int]) -> Instance:
    """``inst`` as a move / resize / keypoint drag so far would leave it (the mask moves with a
    finished move only: shifting it at every mouse event would be wasted work)."""
    (fx, fy), (tx, ty) = drag["from"], drag.get("to", drag["from"])
    dx, dy = tx - fx, ty - fy
    if drag["kind"] == "keypoint":
        kps = list(inst.keypoints)
        x, y, v = kps[drag["k"]]
        kps[drag["k"]] = (round(x + dx, 2), round(y + dy, 2), v)
        return inst.with_(keypoints=tuple(kps))
    x1, y1, x2, y2 = inst.box
    if drag["kind"] == "move":
        h, w = image_size
        dx = min(max(dx, -x1), w - x2)
        dy = min(max(dy, -y1), h - y2)
        mask = inst.mask
        if mask is not None and (dx or dy) and drag.get("done"):
            mask = M.encode(M.shift(M.decode(mask), int(round(dx)), int(round(dy))))
        kps = tuple((round(kx + dx, 2), round(ky + dy, 2), v) if v else (kx, ky, v)
                    for kx, ky, v in inst.keypoints)
        return inst.with_(box=(x1 + dx, y1 + dy, x2 + dx, y2 + dy), mask=mask, keypoints=kps)
    handle = drag["handle"]
    x1, x2 = (tx if "l" in handle else x1), (tx if "r" in handle else x2)
    y1, y2 = (ty if "t" in handle else y1), (ty if "b" in handle else y2)
    x1, x2 = sorted((x1, x2))
    y1, y2 = sorted((y1, y2))
    return inst.with_(box=(round(x1, 2), round(y1, 2), round(x2, 2), round(y2, 2)))


class CanvasTool:
    """press / move / release return True when they handled the event (else the view does)."""

    def press(self, c: ImageCanvas, p: QPointF, x: float, y: float, modifiers) -> bool:
        return False

    def hover(self, c: ImageCanvas, p: QPointF, x: float, y: float) -> None:
        """The mouse moves with no gesture running."""

    def move(self, c: ImageCanvas, x: float, y: float) -> None:
        """The mouse moves during this tool's gesture (``c.drag["to"]`` is already (x, y))."""

    def release(self, c: ImageCanvas, drag: dict) -> None:
        """The gesture ``drag`` ends."""


class SelectTool(CanvasTool):
    """Click selects (Ctrl toggles), drag moves, handles resize, keypoints drag; else rubber band."""

    def press(self, c, p, x, y, modifiers) -> bool:
        kp = c.keypoint_at(p)
        if kp is not None:
            c.active_keypoint = kp
            c.keypoint_picked.emit(*kp)
            c.drag = {"kind": "keypoint", "id": kp[0], "k": kp[1], "from": (x, y)}
            return True
        handle = c.handle_at(p)
        if handle is not None:
            c.drag = {"kind": "resize", "id": handle[0], "handle": handle[1], "from": (x, y)}
            return True
        iid = c.instance_at(p)
        if iid is None:
            c.select_ids([])
            return False  # the view's rubber band
        item = c.items_by_id[iid]
        if modifiers & Qt.KeyboardModifier.ControlModifier:
            item.setSelected(not item.isSelected())
            return True
        if not item.isSelected():
            c.select_ids([iid])
        c.drag = {"kind": "move", "id": iid, "from": (x, y)}
        return True

    def hover(self, c, p, x, y) -> None:
        h = c.handle_at(p)
        c.viewport().setCursor(_RESIZE_CURSORS.get(h[1], Qt.CursorShape.ArrowCursor) if h
                               else Qt.CursorShape.PointingHandCursor if c.keypoint_at(p)
                               else Qt.CursorShape.ArrowCursor)

    def move(self, c, x, y) -> None:
        drag = c.drag
        item = c.items_by_id.get(drag["id"])
        if item is None:
            return
        after = dragged(item.instance, drag, c.image_size)
        if drag["kind"] == "keypoint":
            item.set_keypoints(after.keypoints)
            return
        item.set_box(after.box)
        if drag["kind"] == "move":
            if item.mask_item is not None:
                item.mask_item.setPos(x - drag["from"][0], y - drag["from"][1])
            item.set_keypoints(after.keypoints)

    def release(self, c, drag) -> None:
        if "to" not in drag or drag["to"] == drag["from"] or drag["id"] not in c.items_by_id:
            return
        drag["done"] = True
        before = c.items_by_id[drag["id"]].instance
        after = dragged(before, drag, c.image_size)
        if drag["kind"] == "resize" and (after.box[2] - after.box[0] < 1 or after.box[3] - after.box[1] < 1):
            c.items_by_id[drag["id"]].set_box(before.box)
            return
        c.instance_changed.emit(before, after)


class BoxTool(CanvasTool):
    def press(self, c, p, x, y, modifiers) -> bool:
        c.drag = {"kind": "box", "from": (x, y)}
        c.overlay = c.scene().addPath(QPainterPath(), c.pen())
        return True

    def move(self, c, x, y) -> None:
        path = QPainterPath()
        path.addRect(QRectF(QPointF(*c.drag["from"]), QPointF(x, y)).normalized())
        c.overlay.setPath(path)

    def release(self, c, drag) -> None:
        c.remove_overlay()
        (x0, y0), (x1, y1) = drag["from"], drag.get("to", drag["from"])
        box = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        if box[2] - box[0] >= 2 and box[3] - box[1] >= 2:
            c.box_drawn.emit(tuple(round(v, 2) for v in box))


class ClickTool(CanvasTool):
    """A click inside an object: its region is grown from there (``detector.clickfill``)."""

    def press(self, c, p, x, y, modifiers) -> bool:
        h, w = c.image_size
        if 0 <= x < w and 0 <= y < h:
            c.object_clicked.emit(round(x, 2), round(y, 2))
        return True


class PolygonTool(CanvasTool):
    """Clicks add points; Enter or a double click closes (the canvas's finish_polygon)."""

    def press(self, c, p, x, y, modifiers) -> bool:
        c.polygon.append((x, y))
        c.draw_polygon(None)
        return True

    def hover(self, c, p, x, y) -> None:
        if c.polygon:
            c.draw_polygon((x, y))


class PaintTool(CanvasTool):
    """Brush or eraser on the selected mask; a brush stroke on nothing makes a new instance."""

    def __init__(self, erase: bool):
        self.erase = erase

    def press(self, c, p, x, y, modifiers) -> bool:
        c.drag = {"kind": "paint", "points": [(x, y)]}
        c.overlay = c.scene().addPath(QPainterPath(), QPen(Qt.PenStyle.NoPen))
        c.overlay.setBrush(QBrush(QColor(0, 0, 0, 120) if self.erase else QColor(255, 255, 255, 90)))
        c.overlay.setZValue(5)
        self._preview(c)
        return True

    def move(self, c, x, y) -> None:
        c.drag["points"].append((x, y))
        self._preview(c)

    @staticmethod
    def _preview(c) -> None:
        path = QPainterPath()
        r = c.view.brush_radius
        for x, y in c.drag["points"]:
            path.addEllipse(QPointF(x, y), r, r)
        c.overlay.setPath(path.simplified())

    def release(self, c, drag) -> None:
        c.remove_overlay()
        stroke = M.disc(c.image_size, drag["points"], c.view.brush_radius)
        sel = c.selected_ids()
        if len(sel) == 1:
            before = c.items_by_id[sel[0]].instance
            painted = M.brush(before.mask, before.box, stroke, self.erase)
            if painted is not None:
                c.instance_changed.emit(before, before.with_(mask=painted[0], box=painted[1]))
        elif not self.erase and stroke.any():
            c.mask_painted.emit(stroke)


class KeypointTool(CanvasTool):
    def press(self, c, p, x, y, modifiers) -> bool:
        c.point_clicked.emit(x, y)
        return True


def tool_handlers() -> dict[Tool, CanvasTool]:
    return {Tool.SELECT: SelectTool(), Tool.BOX: BoxTool(), Tool.CLICK: ClickTool(), Tool.POLYGON: PolygonTool(),
            Tool.BRUSH: PaintTool(erase=False), Tool.ERASER: PaintTool(erase=True),
            Tool.KEYPOINT: KeypointTool()}
