"""The editing controller: turns canvas gestures and key commands into undo commands.

One QUndoStack per image inside a QUndoGroup: Ctrl+Z undoes the last edit of the image on screen.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QUndoGroup, QUndoStack

from detector import masks as M
from detector.domain import MODEL, Category, ImageStatus, Instance
from detector.store import Project

from .canvas import ImageCanvas
from .commands import AddInstances, DeleteInstances, EditInstances, SetImageStatus, SplitInstance

_NUDGE = 1001  # merge key for repeated edits of the same kind
GROW_MERGE = 1002  # repeated presses of Grow / Shrink mask: one undo step


class Editor(QObject):
    changed = Signal()  # the current image's instances or status changed in the store
    fill_requested = Signal(int, list, list, list)  # image id, boxes, category ids, instance ids
    click_requested = Signal(int, list, list, list)  # image id, points [(x, y)], category ids, instances to split
    message = Signal(str)

    def __init__(self, canvas: ImageCanvas, parent=None):
        super().__init__(parent)
        self.canvas = canvas
        self.project: Project | None = None
        self.image_id: int | None = None
        self.categories: dict[int, Category] = {}
        self.undo_group = QUndoGroup(self)
        self._stacks: dict[int, QUndoStack] = {}
        self.click_shows_hidden = True  # the loaded model's held-out images say (versions.click_shows_hidden)
        canvas.instance_changed.connect(self._on_changed)
        canvas.box_drawn.connect(self.add_box)
        canvas.object_clicked.connect(self.add_click)
        canvas.polygon_drawn.connect(self.add_polygon)
        canvas.mask_painted.connect(self.add_painted)

    @property
    def view(self):
        return self.canvas.view  # the view state the canvas draws from (app/view_state.py)

    @property
    def current_category(self) -> int | None:
        return self.view.current_category

    @current_category.setter
    def current_category(self, category_id: int | None) -> None:
        self.view.current_category = category_id

    # -- context ----------------------------------------------------------------------------
    def set_project(self, project: Project) -> None:
        self.project = project
        for st in self._stacks.values():
            self.undo_group.removeStack(st)
            st.deleteLater()
        self._stacks.clear()
        self.image_id = None
        self.reload_categories()

    def reload_categories(self) -> None:
        assert self.project is not None
        self.categories = {c.id: c for c in self.project.categories()}
        if self.current_category not in self.categories:
            self.current_category = next(iter(self.categories), None)

    def set_image(self, image_id: int) -> None:
        self.image_id = image_id
        stack = self._stacks.get(image_id)
        if stack is None:
            stack = self._stacks[image_id] = QUndoStack(self.undo_group)
        self.undo_group.setActiveStack(stack)

    def stack(self) -> QUndoStack | None:
        return self._stacks.get(self.image_id) if self.image_id is not None else None

    def _push(self, cmd) -> None:
        st = self.stack()
        if st is not None:
            st.push(cmd)
            if cmd.error:
                self.message.emit(f"Not saved: {cmd.error}")

    def _refresh(self) -> None:
        self.changed.emit()

    def _instances(self, ids: list[int] | None = None) -> list[Instance]:
        if self.project is None or self.image_id is None:
            return []
        insts = self.project.instances(self.image_id)
        return insts if ids is None else [i for i in insts if i.id in ids]

    def _size(self) -> tuple[int, int]:
        return self.canvas.image_size

    def _need_category(self) -> int | None:
        if self.current_category is None:
            self.message.emit("Add a category first (Categories dock → Add…).")
        return self.current_category

    def _blank_keypoints(self, category_id: int) -> tuple:
        cat = self.categories.get(category_id)
        return tuple((0.0, 0.0, 0) for _ in cat.keypoints) if cat and cat.keypoints else ()

    # -- new instances ----------------------------------------------------------------------
    def add_box(self, box: tuple) -> None:
        """A drawn box becomes an instance; the model's second stage is asked for its mask."""
        cat = self._need_category()
        if cat is None or self.image_id is None:
            return
        inst = Instance(cat, tuple(box), keypoints=self._blank_keypoints(cat), image_id=self.image_id)
        cmd = AddInstances(self.project, self._refresh, [inst], "New box")
        self._push(cmd)
        if cmd.error:
            return
        self.canvas.select_ids([i.id for i in cmd.stored])
        self.fill_requested.emit(self.image_id, [list(box)], [cat], [i.id for i in cmd.stored])

    def add_click(self, x: float, y: float) -> None:
        """A click with the Click tool: a prediction there that the confidence slider hides is
        shown (accepted, in the current category), unless the loaded model's held-out images said
        its hidden masks cost more (``click_shows_hidden``); a click inside an instance on show
        cuts it in two, the part around the click a new object of the current category (a region
        or prediction that ran over touching objects); else the worker grows the object's region
        from the click. ``apply_clicks`` takes the worker's answer."""
        cat = self._need_category()
        if cat is None or self.image_id is None:
            return
        # what the canvas holds but the slider hides (not hidden by hand; no store read on a click)
        on_canvas = [it.instance for it in self.canvas.items_by_id.values()]
        hidden = [i for i in on_canvas if not i.shown_at(self.view.min_score)
                  and i.id not in self.view.hidden_ids and i.category_id not in self.view.hidden_categories]
        under = M.instances_at(hidden, (x, y)) if self.click_shows_hidden else []
        if under:
            p = under[0]
            kps = p.keypoints if p.category_id == cat else self._blank_keypoints(cat)
            self.edit([(p, p.with_(accepted=True, category_id=cat, keypoints=kps))], "Show the prediction (click)")
            self.canvas.select_ids([p.id])
            return
        shown = [i for i in on_canvas if i.mask is not None and self.view.is_shown(i)]
        inside = sorted(M.instances_at(shown, (x, y)), key=lambda i: M.area(i.mask))[:1]  # the innermost
        self.click_requested.emit(self.image_id, [[x, y]], [cat], inside or [None])

    def apply_clicks(self, image_id: int, found: list[Instance], missed: int = 0,
                     splits: list | None = None, unsplit: list | None = None) -> None:
        """The instances grown from the person's clicks on ``image_id`` (the image on screen or one
        the person has left since: the click is kept either way); a click that found nothing is
        said in the status bar. A region that is an object already drawn (mask IoU >= 0.5, COCO's
        match, with one the view shows) is not added twice: that object is selected instead.
        ``splits``: (the instance as clicked, its rest, the new instance) per click inside one;
        ``unsplit``: the instances a click inside found one object in (selected, and said)."""
        if missed:
            self.message.emit("Nothing stands out from its surroundings at the click: "
                              "draw a box (W) around the object instead.")
        for inside, rest, new in splits or []:
            self._split(image_id, inside, rest, new)
        if unsplit:
            self.message.emit("One object there: a click inside an object splits it only where it "
                              "holds two (click the second one). Nothing changed.")
            if image_id == self.image_id:
                self.canvas.select_ids([i.id for i in unsplit])
        if not found or self.project is None:
            return
        insts = [i.with_(image_id=image_id, id=None,
                         keypoints=i.keypoints if i.keypoints else self._blank_keypoints(i.category_id))
                 for i in found if i.category_id in self.categories]
        st = self._stacks.get(image_id)
        if not insts or st is None:
            return
        insts = self._not_drawn_yet(image_id, insts)
        if not insts:
            return
        cmd = AddInstances(self.project, self._refresh, insts, "New object (click)")
        st.push(cmd)
        if cmd.error:
            self.message.emit(f"Not saved: {cmd.error}")
        elif image_id == self.image_id:
            self.canvas.select_ids([i.id for i in cmd.stored])

    def _split(self, image_id: int, inside: Instance, rest: Instance, new: Instance) -> None:
        """Cut ``inside`` in two (``SplitInstance``), unless it changed since the click."""
        st = self._stacks.get(image_id)
        before = self.project.instance(inside.id) if self.project is not None and st is not None else None
        if before is None or (before.mask, tuple(before.box)) != (inside.mask, tuple(inside.box)):
            self.message.emit("The object changed before its split came back: click it again.")
            return
        rest = before.with_(mask=rest.mask, box=rest.box)
        new = new.with_(image_id=image_id, id=None,
                        keypoints=new.keypoints if new.keypoints else self._blank_keypoints(new.category_id))
        cmd = SplitInstance(self.project, self._refresh, before, rest, new)
        st.push(cmd)
        if cmd.error:
            self.message.emit(f"Not saved: {cmd.error}")
        elif image_id == self.image_id:
            self.canvas.select_ids([cmd.stored.id])

    def _not_drawn_yet(self, image_id: int, insts: list[Instance]) -> list[Instance]:
        """``insts`` less those that match an object the view shows on the image (mask IoU >= 0.5);
        the matched objects are selected (on screen) and the status bar says so."""
        shown = [i for i in self.project.instances(image_id) if self.view.is_shown(i)]
        if not shown:
            return insts
        ious = M.iou_matrix(insts, shown)
        twice = {k: int(np.argmax(ious[k])) for k in range(len(insts)) if ious[k].max() >= 0.5}
        if twice:
            names = sorted({self.categories[shown[j].category_id].name for j in twice.values()
                            if shown[j].category_id in self.categories})
            self.message.emit(f"Already drawn: the {', '.join(names) or 'object'} there is selected, "
                              "not added twice (to redo it: Delete, then click again).")
            if image_id == self.image_id:
                self.canvas.select_ids(sorted({shown[j].id for j in twice.values()}))
        return [inst for k, inst in enumerate(insts) if k not in twice]

    def add_polygon(self, points: list) -> None:
        cat = self._need_category()
        if cat is None or self.image_id is None:
            return
        h, w = self._size()
        rle = M.from_polygons([[v for p in points for v in p]], h, w)
        if M.area(rle) == 0:
            return
        inst = Instance(cat, M.bbox_xyxy(rle), rle, self._blank_keypoints(cat), image_id=self.image_id)
        self._push(AddInstances(self.project, self._refresh, [inst], "New polygon"))

    def add_painted(self, mask: np.ndarray) -> None:
        cat = self._need_category()
        if cat is None or self.image_id is None:
            return
        rle = M.encode(mask)
        inst = Instance(cat, M.bbox_xyxy(rle), rle, self._blank_keypoints(cat), image_id=self.image_id)
        self._push(AddInstances(self.project, self._refresh, [inst], "New painted mask"))

    def apply_fill(self, image_id: int, filled: list[Instance]) -> None:
        """The fill's mask/keypoints for the person's boxes (by instance id), for each box still
        as drawn: one moved, resized, painted or deleted meanwhile keeps what the person did."""
        if image_id != self.image_id:
            return
        current = {i.id: i for i in self._instances()}
        pairs = []
        for f in filled:
            before = current.get(f.id)
            if (before is not None and before.mask is None and before.category_id == f.category_id
                    and np.allclose(before.box, f.box, atol=0.02)):
                kps = f.keypoints if self.categories[before.category_id].keypoints and f.keypoints \
                    else before.keypoints  # a classical cut brings no keypoints
                pairs.append((before, before.with_(mask=f.mask, keypoints=kps)))
        if pairs:
            self._push(EditInstances(self.project, self._refresh, pairs, "Mask for the box"))

    # -- edits of existing instances --------------------------------------------------------
    def _on_changed(self, before: Instance, after: Instance) -> None:
        self._push(EditInstances(self.project, self._refresh, [(before, after)], "Edit"))

    def edit(self, pairs: list[tuple[Instance, Instance]], text: str, merge_key: int = -1) -> None:
        pairs = [(a, b) for a, b in pairs if a != b]
        if pairs:
            self._push(EditInstances(self.project, self._refresh, pairs, text, merge_key))

    def delete_selected(self) -> None:
        insts = self._instances(self.canvas.selected_ids())
        if insts:
            self._push(DeleteInstances(self.project, self._refresh, insts, f"Delete {len(insts)}"))

    def duplicate_selected(self) -> None:
        insts = self._instances(self.canvas.selected_ids())
        if not insts:
            return
        h, w = self._size()
        copies = []
        for i in insts:
            dx = 10 if i.box[2] + 10 <= w else -10
            dy = 10 if i.box[3] + 10 <= h else -10
            mask = None
            if i.mask is not None:

                mask = M.encode(M.shift(M.decode(i.mask), dx, dy))
            kps = tuple((x + dx, y + dy, v) if v else (x, y, v) for x, y, v in i.keypoints)
            copies.append(Instance(i.category_id, (i.box[0] + dx, i.box[1] + dy, i.box[2] + dx,
                                                   i.box[3] + dy), mask, kps, image_id=self.image_id))
        cmd = AddInstances(self.project, self._refresh, copies, "Duplicate")
        self._push(cmd)
        self.canvas.select_ids([i.id for i in cmd.stored])

    def grow_selected(self, px: int) -> None:
        """Edit > Grow / Shrink mask: the selected masks' outlines moved out (``px`` > 0) or in by
        ``|px|`` steps (``masks.grow``): a step is an image pixel while the view shows the image at
        more than half size, else as many as one screen pixel spans (so a press on a large photo
        seen whole still shows). Repeated presses on the same instances are one undo step. A box
        without a mask, or a mask that shrinking would empty, is left as it is."""
        insts = [i for i in self._instances(self.canvas.selected_ids()) if i.mask is not None]
        if not insts:
            self.message.emit("Select an instance with a mask to grow or shrink it.")
            return
        step = self.canvas.image_px_per_screen_px()
        pairs = []
        for i in insts:
            rle = M.grow(i.mask, px * step)
            if rle is None:
                finer = f" (a press is {step} image pixels at this zoom: zoom in for one)" if step > 1 else ""
                self.message.emit(f"Shrinking would leave nothing of the mask: left as it is{finer}.")
                continue
            pairs.append((i, i.with_(mask=rle, box=M.bbox_xyxy(rle))))
        self.edit(pairs, "Grow / shrink mask", merge_key=GROW_MERGE)

    def set_category(self, category_id: int) -> None:
        """Selected instances get the category; with none selected it is the one for new ones."""
        if category_id not in self.categories:
            return
        insts = self._instances(self.canvas.selected_ids())
        self.current_category = category_id
        pairs = []
        for i in insts:
            kps = i.keypoints
            if len(kps) != len(self.categories[category_id].keypoints):
                kps = self._blank_keypoints(category_id)
            pairs.append((i, i.with_(category_id=category_id, keypoints=kps)))
        self.edit(pairs, "Set category")

    def accept_selected(self) -> None:
        insts = self._instances(self.canvas.selected_ids())
        self.edit([(i, i.with_(accepted=True)) for i in insts if not i.accepted], "Accept")

    def accept_above(self, threshold: float) -> None:
        insts = [i for i in self._instances() if not i.accepted and i.changed_by == MODEL
                 and (i.score or 0) >= threshold and self.view.is_shown(i)]
        self.edit([(i, i.with_(accepted=True)) for i in insts], f"Accept {len(insts)} above {threshold:.2f}")

    def mark_reviewed(self, threshold: float) -> None:
        """What is shown is what is kept: shown predictions are accepted, hidden ones dropped."""
        if self.project is None or self.image_id is None:
            return
        st = self.stack()
        st.beginMacro("Mark reviewed")
        insts = self._instances()
        preds = [i for i in insts if i.changed_by == MODEL and not i.accepted]
        keep = [i for i in preds if (i.score or 0) >= threshold and i.id not in self.view.hidden_ids
                and i.category_id not in self.view.hidden_categories]
        drop = [i for i in preds if i not in keep]
        if keep:
            st.push(EditInstances(self.project, self._refresh, [(i, i.with_(accepted=True)) for i in keep],
                                  "Accept shown"))
        if drop:
            st.push(DeleteInstances(self.project, self._refresh, drop, "Drop hidden predictions"))
        st.push(SetImageStatus(self.project, self._refresh, self.image_id, ImageStatus.REVIEWED))
        st.endMacro()

    # -- keypoints --------------------------------------------------------------------------
    def toggle_keypoint(self) -> None:
        """V: cycle the active keypoint visible -> occluded -> unlabelled -> visible."""
        kp = self.canvas.active_keypoint
        if kp is None:
            self.message.emit("Click a keypoint first, then V cycles visible / occluded / unlabelled.")
            return
        iid, k = kp
        (inst,) = self._instances([iid]) or (None,)
        if inst is None or k >= len(inst.keypoints):
            return
        x, y, v = inst.keypoints[k]
        nv = {2: 1, 1: 0, 0: 2}[v]
        if nv == 2 and x == 0 and y == 0:  # an unlabelled point gets a place when shown again
            x1, y1, x2, y2 = inst.box
            x, y = (x1 + x2) / 2, (y1 + y2) / 2
        kps = list(inst.keypoints)
        kps[k] = (x, y, nv)
        self.edit([(inst, inst.with_(keypoints=tuple(kps)))], "Keypoint visibility")
        if nv == 0:
            self.canvas.active_keypoint = None

    def place_next_keypoint(self, x: float, y: float) -> bool:
        """Put the selected instance's first unlabelled keypoint at (x, y); False when none is left."""
        sel = self._instances(self.canvas.selected_ids())
        if len(sel) != 1:
            self.message.emit("Select one instance of a keypoint category first.")
            return False
        inst = sel[0]
        cat = self.categories.get(inst.category_id)
        if not cat or not cat.keypoints:
            self.message.emit(f"{cat.name if cat else 'This category'} has no keypoints.")
            return False
        kps = list(inst.keypoints) or [(0.0, 0.0, 0)] * len(cat.keypoints)
        missing = [k for k, (_, _, v) in enumerate(kps) if v == 0]
        if not missing:
            return False
        kps[missing[0]] = (round(x, 2), round(y, 2), 2)
        self.edit([(inst, inst.with_(keypoints=tuple(kps)))], f"Place {cat.keypoints[missing[0]]}")
        return len(missing) > 1

    def next_missing_name(self) -> str | None:
        sel = self._instances(self.canvas.selected_ids())
        if len(sel) != 1:
            return None
        cat = self.categories.get(sel[0].category_id)
        if not cat or not cat.keypoints:
            return None
        kps = list(sel[0].keypoints) or [(0.0, 0.0, 0)] * len(cat.keypoints)
        missing = [k for k, (_, _, v) in enumerate(kps) if v == 0]
        return cat.keypoints[missing[0]] if missing else None
