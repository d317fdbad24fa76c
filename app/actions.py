"""The window's action table: every command with its shortcut and tooltip, the menus and toolbars
built from it, the canvas tools, the confidence and mask sliders, recent folders and the
shortcuts sheet. Actions call into the window's controllers; nothing here keeps project state."""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import QSettings, Qt
from PySide6.QtGui import QAction, QActionGroup, QKeySequence
from PySide6.QtWidgets import QDialog, QHBoxLayout, QLabel, QSlider, QTextBrowser, QToolBar, QVBoxLayout, QWidget

from detector.versions import SliderAdvice

from .canvas import Tool

if TYPE_CHECKING:
    from .main_window import MainWindow

TOOLS = [
    (Tool.SELECT, "Select", "S", "Select, move, resize; drag keypoints"),
    (Tool.BOX, "Box", "W", "Draw a box; the model fills in its mask"),
    (Tool.CLICK, "Click", "Q", "Click inside an object the model missed: a prediction the slider hides "
     "there is shown, else its outline is found from the click (Ctrl+Z and draw a box where it is wrong); "
     "a click inside a shape that ran over two objects splits off the clicked one"),
    (Tool.POLYGON, "Polygon", "P", "Click points, Enter or double-click to close"),
    (Tool.BRUSH, "Brush", "B", "Paint the selected mask ([ and ] size; = and - grow or shrink it a pixel)"),
    (Tool.ERASER, "Eraser", "E", "Erase from the selected mask ([ and ] size)"),
    (Tool.KEYPOINT, "Keypoint", "K", "Click to place the next missing keypoint"),
]
FOLDER_FORMATS = (("yolo", "YOLO"), ("voc", "Pascal VOC"), ("labelme", "labelme"))


class Actions:
    """Built once by the window; ``acts.train``, ``acts.next``, … are its QActions."""

    def __init__(self, w: MainWindow):
        self.w = w
        self._build()
        self._menus()
        self._toolbars()

    def _action(self, text: str, slot, shortcut=None, tip: str = "") -> QAction:
        act = QAction(text, self.w)
        if shortcut:
            seqs = shortcut if isinstance(shortcut, list) else [shortcut]
            act.setShortcuts([QKeySequence(s) for s in seqs])
            tip = f"{tip or text} ({', '.join(QKeySequence(s).toString() for s in seqs)})"
        act.setToolTip(tip or text)
        act.triggered.connect(slot)
        self.w.addAction(act)  # shortcuts work wherever the focus is in the window
        return act

    def _build(self) -> None:
        a, w, ed, ex = self._action, self.w, self.w.editor, self.w.exchange
        self.open = a("Open folder…", w.choose_folder, QKeySequence.StandardKey.Open)
        self.prev = a("Previous", lambda: w.step(-1), ["A", "PgUp"], "Previous image")
        self.next = a("Next", lambda: w.step(1), ["D", "PgDown"], "Next image")
        self.fit = a("Fit", w.canvas.fit, "F", "Fit the image in the window")
        self.one = a("1:1", w.canvas.actual_size, "Ctrl+1", "Actual pixels")
        self.auto_contrast = a("Auto contrast (dim images)", lambda on: w.set_auto_contrast(on), "C",
                               "Stretch dim images (fluorescence) to the screen's full range; photos are "
                               "shown as stored, the files never change")
        self.auto_contrast.setCheckable(True)
        self.auto_contrast.setChecked(w.view.auto_contrast)
        self.reviewed = a("Reviewed ✓", w.mark_reviewed, None,
                          "Keep what is shown, mark the image reviewed and go to the next (Space)")
        self.undo = ed.undo_group.createUndoAction(w, "Undo")
        self.undo.setShortcut(QKeySequence("Ctrl+Z"))
        self.redo = ed.undo_group.createRedoAction(w, "Redo")
        self.redo.setShortcuts([QKeySequence("Ctrl+Shift+Z"), QKeySequence("Ctrl+Y")])
        w.addActions([self.undo, self.redo])
        self.delete = a("Delete", ed.delete_selected, ["Del", "Backspace"], "Delete selected")
        self.duplicate = a("Duplicate", ed.duplicate_selected, "Ctrl+D", "Duplicate selected")
        self.accept = a("Accept", ed.accept_selected, ["Return", "Enter"], "Accept selected")
        self.accept_all = a("Accept all ≥ slider", lambda: ed.accept_above(w.view.min_score),
                            ["Ctrl+Return", "Ctrl+Enter"], "Accept every prediction above the slider")
        self.keypoint_vis = a("Keypoint visibility", ed.toggle_keypoint, "V",
                              "Cycle the clicked keypoint: visible / occluded / unlabelled")
        self.grow = a("Grow mask", lambda: ed.grow_selected(1), ["=", "+"],
                      "Move the selected mask's outline out a pixel (a screen pixel zoomed out); repeat for more")
        self.shrink = a("Shrink mask", lambda: ed.grow_selected(-1), "-",
                        "Move the selected mask's outline in a pixel (a screen pixel zoomed out); repeat for more")
        self.smaller = a("Smaller brush", lambda: self.brush(-2), "[")
        self.bigger = a("Bigger brush", lambda: self.brush(2), "]")
        self.help = a("Shortcuts", self.show_shortcuts, ["F1", "?"], "Keyboard shortcuts")
        self.predict_all = a("Pre-annotate all", w.models.predict_all, "Ctrl+P",
                             "Pre-annotate every image not yet reviewed")
        self.cancel = a("Cancel", w.models.cancel, "Ctrl+.", "Cancel background work")
        self.cancel.setEnabled(False)
        self.restart_worker = a("Restart model worker", w.models.start, None,
                                "Start a fresh inference worker (after an error)")
        self.train = a("Train", w.training.start, "Ctrl+T", "Fine-tune on the reviewed images")
        self.train_settings = a("Training settings…", w.training.edit_settings)
        self.versions = a("Model versions…", w.training.show_versions)
        self.coco = a("Start from COCO weights…", w.models.start_from_coco, None,
                      "torchvision's COCO Mask R-CNN as the model, through a class mapping")
        self.load_weights = a("Load weights…", lambda: w.starting.load_weights(), None,
                              "A Loupe checkpoint, or a torchvision Mask R-CNN state dict (.pth)")
        self.import_file = a("Import annotations…", lambda: ex.import_file(), "Ctrl+I",
                             "Import COCO, COCO results, labelme, VOC or a YOLO data.yaml (all or nothing)")
        self.import_folder = {
            fmt: a(f"Import {label} folder…", lambda _=False, f=fmt: ex.import_file(fmt=f), None,
                   f"Import a folder of {label} annotations (all or nothing)") for fmt, label in FOLDER_FORMATS}
        self.export_as = {
            fmt: a(f"Export as {label}…", lambda _=False, f=fmt: ex.export_format(f), None,
                   f"Export every image as {label} into a folder") for fmt, label in FOLDER_FORMATS}
        self.export = a("Export COCO…", lambda: ex.export_file(), "Ctrl+E",
                        "Export every image as COCO JSON, masks as RLE")
        self.export_polygons = a("Export COCO with polygons…", lambda: ex.export_file(polygons=True),
                                 "Ctrl+Shift+E", "Export as COCO JSON with masks traced as polygons")
        self.export_reviewed = a("Export reviewed images only…", lambda: ex.export_file(reviewed_only=True),
                                 None, "Export only the images marked reviewed")
        self.quit = a("Quit", w.close, QKeySequence.StandardKey.Quit)
        for n in range(1, 10):
            a(f"Category {n}", lambda _=False, n=n: w.categories.by_number(n), str(n))
        self.tool_group = QActionGroup(w)
        self.tools: dict[Tool, QAction] = {}
        for tool, text, key, tip in TOOLS:
            act = a(text, lambda _=False, t=tool: self.set_tool(t), key, tip)
            act.setCheckable(True)
            self.tool_group.addAction(act)
            self.tools[tool] = act
        self.tools[Tool.SELECT].setChecked(True)

    def _menus(self) -> None:
        bar = self.w.menuBar()
        m = bar.addMenu("&File")
        m.addAction(self.open)
        self.recent_menu = m.addMenu("Open recent")
        self.fill_recent()
        m.addSeparator()
        m.addAction(self.import_file)
        m.addActions(list(self.import_folder.values()))
        m.addSeparator()
        m.addActions([self.export, self.export_polygons, self.export_reviewed])
        m.addActions(list(self.export_as.values()))
        m.addSeparator()
        m.addAction(self.quit)
        e = bar.addMenu("&Edit")
        e.addActions([self.undo, self.redo])
        e.addSeparator()
        e.addActions([self.delete, self.duplicate, self.accept, self.accept_all, self.keypoint_vis, self.reviewed])
        e.addSeparator()
        e.addActions([self.grow, self.shrink])
        bar.addMenu("&Tools").addActions(list(self.tools.values()))
        bar.addMenu("&View").addActions([self.fit, self.one, self.auto_contrast, self.prev, self.next])
        mm = bar.addMenu("&Model")
        mm.addActions([self.predict_all, self.cancel, self.restart_worker])
        mm.addSeparator()
        mm.addActions([self.train, self.train_settings, self.versions])
        mm.addSeparator()
        mm.addActions([self.coco, self.load_weights])
        bar.addMenu("&Help").addAction(self.help)

    def _toolbars(self) -> None:
        tb = QToolBar("Main")
        tb.setObjectName("main toolbar")
        tb.addActions([self.open, self.prev, self.next, self.fit])
        tb.addSeparator()
        tb.addActions([self.undo, self.redo, self.accept, self.reviewed])
        tb.addSeparator()
        tb.addActions([self.predict_all, self.cancel, self.train])
        tb.addSeparator()
        tb.addWidget(self._sliders())
        self.w.addToolBar(tb)
        tools = QToolBar("Tools")
        tools.setObjectName("tools toolbar")
        tools.addActions(list(self.tools.values()))
        self.w.addToolBar(Qt.ToolBarArea.LeftToolBarArea, tools)

    def _sliders(self) -> QWidget:
        canvas = self.w.canvas
        box = QWidget()
        lay = QHBoxLayout(box)
        lay.setContentsMargins(6, 0, 6, 0)
        lay.addWidget(QLabel("Confidence"))
        self.score_slider = QSlider(Qt.Orientation.Horizontal)
        self.score_slider.setRange(0, 100)
        self.score_slider.setValue(50)
        self.score_slider.setMaximumWidth(140)
        self.score_label = QLabel("0.50")
        self.score_slider.valueChanged.connect(self._on_threshold)
        lay.addWidget(self.score_slider)
        lay.addWidget(self.score_label)
        lay.addWidget(QLabel("  Mask"))
        self.alpha_slider = QSlider(Qt.Orientation.Horizontal)
        self.alpha_slider.setRange(0, 255)
        self.alpha_slider.setValue(canvas.mask_alpha)
        self.alpha_slider.setMaximumWidth(100)
        self.alpha_slider.sliderReleased.connect(
            lambda: canvas.set_mask_alpha(self.alpha_slider.value(), self.w.editor.categories))
        lay.addWidget(self.alpha_slider)
        self.w.view.min_score = 0.5
        self._slider_set = 50  # the value last set for the person: moved from it, theirs is kept
        self._slider_tip = "Predictions scored below this are hidden"
        self.score_slider.setToolTip(self._slider_tip)
        return box

    def suggest_slider(self, advice: SliderAdvice | None) -> None:
        """A newly loaded model's slider: the value its held-out images cost least to correct at.
        Set unless the person moved the slider since it was last set for them."""
        if advice is None:  # a model that was not priced (a COCO start, an older version)
            self.score_slider.setToolTip(self._slider_tip)
            return
        v = round(advice.value * 100)
        self.score_slider.setToolTip(f"{self._slider_tip}. This model suggests {advice.value:.2f}: {advice.text()}")
        if self.score_slider.value() == self._slider_set:
            self._slider_set = v
            self.score_slider.setValue(v)
            self.w.say(f"Confidence slider set to {advice.value:.2f}: {advice.short()}.", 15000)
        elif self.score_slider.value() != v:
            self.w.say(f"This model suggests confidence {advice.value:.2f}; your {self.score_slider.value() / 100:.2f} "
                       "is kept (the slider's tooltip says why).", 15000)

    def _on_threshold(self, value: int) -> None:
        self.score_label.setText(f"{value / 100:.2f}")
        self.w.canvas.apply_threshold(value / 100)
        self.w.instances_panel.apply_threshold(value / 100)

    # -- tools ----------------------------------------------------------------------------------
    def set_tool(self, tool: Tool) -> None:
        self.w.canvas.set_tool(tool)
        self.tools[tool].setChecked(True)
        if tool is Tool.KEYPOINT:
            name = self.w.editor.next_missing_name()
            self.w.say(f"Click to place '{name}'" if name else
                       "Select one instance of a keypoint category first", 6000)

    def place_keypoint(self, x: float, y: float) -> None:
        more = self.w.editor.place_next_keypoint(x, y)
        name = self.w.editor.next_missing_name()
        if more and name:
            self.w.say(f"Click to place '{name}'", 6000)
        else:
            self.set_tool(Tool.SELECT)

    def brush(self, delta: float) -> None:
        view = self.w.view
        view.brush_radius = max(1.0, min(100.0, view.brush_radius + delta))
        self.w.say(f"Brush radius {view.brush_radius:.0f} px", 2000)

    # -- recent folders, shortcuts ----------------------------------------------------------------
    def fill_recent(self) -> None:
        self.recent_menu.clear()
        for folder in recent_folders()[:8]:
            act = self.recent_menu.addAction(folder)
            act.triggered.connect(lambda _=False, f=folder: self.w.open_folder(f))

    def remember(self, folder: str) -> None:
        recent = [folder] + [f for f in recent_folders() if f != folder]
        QSettings().setValue("recent_folders", recent[:8])
        self.fill_recent()

    def show_shortcuts(self) -> None:
        rows = []
        for act in self.w.actions():
            keys = ", ".join(k.toString() for k in act.shortcuts())
            if keys:
                rows.append(f"<tr><td><b>{keys}</b></td><td>{act.text()}</td></tr>")
        rows.append("<tr><td><b>Space</b></td><td>Keep what is shown, mark reviewed, next image</td></tr>")
        rows.append("<tr><td><b>Space + drag, middle drag</b></td><td>Pan</td></tr>")
        rows.append("<tr><td><b>Wheel</b></td><td>Zoom to the cursor</td></tr>")
        dlg = QDialog(self.w)
        dlg.setWindowTitle("Keyboard shortcuts")
        text = QTextBrowser()
        text.setHtml("<table cellpadding=3>" + "".join(rows) + "</table>")
        lay = QVBoxLayout(dlg)
        lay.addWidget(text)
        dlg.resize(460, 560)
        dlg.show()
        self._help = dlg


def recent_folders() -> list[str]:
    """Recent folders from QSettings; anything else found there (an older or newer Loupe, a hand
    edit) is ignored rather than misread."""
    value = QSettings().value("recent_folders", [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        return []
    return [v for v in value if isinstance(v, str) and v]
