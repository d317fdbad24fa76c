"""The real window, offscreen: open a folder, see the first image and its instances, navigate."""

import os
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QThread, QTimer, Qt

from app.image_list import ID_ROLE
from app.main_window import MainWindow
from detector.coco import import_coco
from detector.domain import ImageStatus


@pytest.fixture
def window(open_window, project, demo):
    import_coco(project, demo[1])
    return open_window(project)


def test_opens_folder_and_shows_first_image(window, project):
    first = project.images()[0]
    assert window.current_image_id == first.id
    assert window.canvas.has_image
    assert len(window.canvas.items_by_id) == len(project.instances(first.id))
    assert window.instances_panel.count() == len(project.instances(first.id))
    rows = [window.instances_panel.item(i).text() for i in range(window.instances_panel.count())]
    assert rows and all(r.endswith("   imported") for r in rows), rows
    assert window.image_list.model.rowCount() == 6


def test_the_image_stays_whole_when_the_canvas_shrinks_until_the_person_zooms(qtbot, window):
    """A notice or a dock opening after the image is shown shrinks the canvas: the image is
    fitted again (it was cut off at the bottom); after a zoom the person's scale is kept."""
    from PySide6.QtCore import QPoint, QPointF
    from PySide6.QtGui import QWheelEvent

    canvas = window.canvas
    window.resize(1280, 800)
    window.show()
    qtbot.waitExposed(window)
    canvas.fit()

    def shown_whole() -> bool:
        r = canvas.mapFromScene(canvas.sceneRect()).boundingRect()
        vp = canvas.viewport().rect()
        return vp.adjusted(-2, -2, 2, 2).contains(r) and (abs(r.width() - vp.width()) <= 3
                                                       or abs(r.height() - vp.height()) <= 3)

    assert shown_whole()
    canvas.resize(canvas.width(), canvas.height() - 150)
    assert shown_whole() and canvas.fitted
    pos = QPointF(canvas.viewport().rect().center())
    canvas.wheelEvent(QWheelEvent(pos, pos, QPoint(), QPoint(0, 120), Qt.MouseButton.NoButton,
                                  Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase, False))
    zoom = canvas.transform().m11()
    canvas.resize(canvas.width(), canvas.height() + 100)
    assert not canvas.fitted and canvas.transform().m11() == zoom


def test_instance_rows_say_where_each_came_from_and_what_was_done():
    from app.docks import instance_row
    from detector.domain import MODEL, PERSON, Category, Instance

    cat = Category("circle")
    pred = Instance(1, (0, 0, 5, 5), score=0.874, source=MODEL, changed_by=MODEL)
    assert instance_row(pred, cat) == "circle   0.87   model · to check"
    assert instance_row(pred.with_(changed_by=PERSON), cat) == "circle   0.87   model · corrected"
    assert instance_row(pred.with_(accepted=True), cat) == "circle   0.87   model · accepted"
    assert instance_row(Instance(1, (0, 0, 5, 5)), cat) == "circle   yours"  # drawn here: no score
    assert instance_row(Instance(1, (0, 0, 5, 5)), None) == "?   yours"


def test_next_previous_and_selection_sync(window, qtbot, project):
    ids = [r.id for r in project.images()]
    with qtbot.waitSignal(window.image_shown, timeout=5000) as sig:
        window.acts.next.trigger()
    assert sig.args == [ids[1]]
    assert {k.toString() for k in window.acts.next.shortcuts()} == {"D", "PgDown"}
    with qtbot.waitSignal(window.image_shown, timeout=5000):
        window.step(-1)
    assert window.current_image_id == ids[0]
    window.instances_panel.item(0).setSelected(True)
    inst_id = window.instances_panel.item(0).data(Qt.ItemDataRole.UserRole)
    assert window.canvas.items_by_id[inst_id].isSelected()


def test_status_filter_and_mark_reviewed(window, qtbot, project):
    first = project.images()[0]
    project.set_status(first.id, ImageStatus.IN_REVIEW)
    window.image_list.model.set_records(project.images())
    window.current_image_id = first.id
    with qtbot.waitSignal(window.image_shown, timeout=5000):
        window.mark_reviewed()
    assert project.image(first.id).status is ImageStatus.REVIEWED
    window.image_list.filter.setCurrentIndex(window.image_list.filter.findData("in review"))
    assert window.image_list.proxy.rowCount() == 0


def test_the_list_filters_through_python_only_while_a_filter_is_set(window, qtbot, project):
    """Unfiltered, the list shows a proxy that accepts rows in C++ (no GIL wait per streamed
    row); a filter swaps in the filtering proxy, clearing it swaps back, the selection kept."""
    lst = window.image_list
    assert lst.proxy is lst.plain and lst.filtered.sourceModel() is None
    recs = project.images()
    lst.select(recs[1].id)
    lst.search.setText(recs[1].path[-6:])
    assert lst.proxy is lst.filtered and lst.proxy.rowCount() == 1
    assert int(lst.view.currentIndex().data(ID_ROLE)) == recs[1].id
    lst.search.setText("")
    assert lst.proxy is lst.plain and lst.filtered.sourceModel() is None
    assert lst.proxy.rowCount() == len(recs) and int(lst.view.currentIndex().data(ID_ROLE)) == recs[1].id
    with qtbot.waitSignal(window.image_shown, timeout=5000):  # the new selection model still drives the window
        lst.view.setCurrentIndex(lst.proxy.index(2, 0))
    assert window.current_image_id == int(lst.proxy.index(2, 0).data(ID_ROLE))


def test_no_threads_or_timers_left_after_close(qtbot, project):
    w = MainWindow(project)
    qtbot.addWidget(w)
    qtbot.waitUntil(lambda: w.canvas.has_image, timeout=5000)
    w.close()
    assert w.loader.pool.activeThreadCount() == 0
    assert not [t for t in w.findChildren(QThread) if t.isRunning()]
    assert not [t for t in w.findChildren(QTimer) if t.isActive()]


def test_thumbnails_are_decoded_lazily_off_the_gui_thread(qtbot, tmp_path):
    from PIL import Image
    from PySide6.QtGui import QColor, QIcon

    from detector.store import Project

    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(400):
        Image.new("RGB", (96, 72), (i % 200, 80, 160)).save(folder / f"im{i:04d}.png")
    p = Project(folder)
    p.scan()
    w = MainWindow(p)
    qtbot.addWidget(w)
    w.resize(1100, 700)
    w.show()
    model = w.image_list.model
    first = model.index(0)
    qtbot.waitUntil(lambda: isinstance(model.data(first, Qt.ItemDataRole.DecorationRole), QIcon),
                    timeout=10_000)
    pm = model.data(first, Qt.ItemDataRole.DecorationRole).pixmap(48, 48)
    assert (pm.width(), pm.height()) == (48, 36)  # aspect ratio kept
    assert pm.toImage().pixelColor(24, 18) == QColor(0, 80, 160)
    # Only the rows on screen were decoded, not the whole folder.
    assert 0 < model.thumbnails.requested < 60, model.thumbnails.requested
    w.close()
    assert model.thumbnails.pool.activeThreadCount() == 0


def test_the_window_opens_without_importing_torch(tmp_path):
    """The window and the first image come before torch: the GUI modules import none of it (the
    inference worker imports it on its own thread, then the starting-model offer appears)."""
    import subprocess
    import sys

    code = ("import sys; import app.main_window, app.main; "
            "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).resolve().parent.parent,
                       env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_the_starting_offer_waits_for_the_model_side(qtbot, project, open_window):
    w = open_window(project)
    qtbot.waitUntil(lambda: w.starting.ready, timeout=60_000)
    assert w.starting.banner.isVisibleTo(w)
    assert "no model yet" in w.models.device_label.text()
    from detector.inference import describe_device, pick_device
    assert w.models.device_label.text().startswith(describe_device(pick_device()) + " · ")  # "CPU · bfloat16 · …"
    assert "(170 MB)" in w.starting.download_button.text()  # named once detector.pretrained is in
    # A line longer than the room beside the model label is cut with "…", whole in the tooltip.
    w.resize(1280, 800)
    w.show()
    qtbot.waitExposed(w)
    long = "broken.json: " + "the entry is not what COCO allows " * 12
    w.say(long)
    bar = w.statusBar()
    shown = bar.currentMessage()
    assert shown.endswith("…") and long.startswith(shown[:-1]) and bar.toolTip() == long
    room = w.width() - w.models.device_label.width()
    assert bar.fontMetrics().horizontalAdvance(shown) < room
    # Resized, the line is cut again to the new room: more of it when wider, less when narrower.
    w.resize(1800, 800)
    qtbot.waitUntil(lambda: len(bar.currentMessage()) > len(shown), timeout=5000)
    assert bar.currentMessage().endswith("…") and bar.toolTip() == long
    w.resize(900, 800)
    qtbot.waitUntil(lambda: len(bar.currentMessage()) < len(shown), timeout=5000)
    assert long.startswith(bar.currentMessage()[:-1]) and bar.toolTip() == long
    assert bar.fontMetrics().horizontalAdvance(bar.currentMessage()) < w.width() - w.models.device_label.width()
    w.resize(1280, 800)
    w.say("Saved.")
    assert bar.currentMessage() == "Saved." and bar.toolTip() == ""
    w.say(long)
    bar.showMessage("an action's status tip")  # another line over it: the tooltip goes with it
    assert bar.toolTip() == ""
    w.say(long)
    bar.clearMessage()
    assert bar.toolTip() == ""


def test_a_known_project_shows_its_list_at_once_and_reconciles_the_folder_after(qtbot, project, open_window):
    """Reopening lists what the store knows right away; the folder is read again off the GUI
    thread: a new file appears, a removed one is flagged, the person's place is kept."""
    import shutil

    recs = project.images()
    shutil.copyfile(project.root / recs[0].path, project.root / "zz_new.png")
    (project.root / recs[-1].path).unlink()
    w = MainWindow()
    qtbot.addWidget(w)
    with qtbot.waitSignal(w.scanned, timeout=30_000) as scan:
        w.set_project(project)
        assert w.image_list.model.rowCount() == len(recs)  # before the scan: the stored list
        assert w.current_image_id == recs[0].id
    assert (scan.args[0].added, scan.args[0].missing) == (1, 1)
    paths = [r.path for r in w.image_list.model.records]
    assert "zz_new.png" in paths and len(paths) == len(recs) + 1
    assert project.image(recs[-1].id).status is ImageStatus.UNREADABLE
    assert w.current_image_id == recs[0].id and "1 new, 1 gone" in w.statusBar().currentMessage()
    w.close()


def test_a_big_known_project_lists_a_first_page_then_streams_the_rest(qtbot, project, monkeypatch):
    """A known project bigger than the first page: the window lists the first page from the store
    at once (and shows its first image), the rest of the stored list arrives from the background
    in file-name order, and a replaced or vanished file updates just its own row."""
    import app.folder

    monkeypatch.setattr(app.folder, "FIRST_PAGE", 3)
    monkeypatch.setattr(app.folder, "CHUNK", 2)
    recs = project.images()
    assert len(recs) > 5
    (project.root / recs[1].path).unlink()
    w = MainWindow()
    qtbot.addWidget(w)
    with qtbot.waitSignal(w.scanned, timeout=30_000) as scan:
        w.set_project(project)
        assert [r.id for r in w.image_list.model.records] == [r.id for r in recs[:3]]
        assert w.current_image_id == recs[0].id
    assert scan.args[0].missing == 1 and scan.args[0].touched == (recs[1].path,)
    assert [r.path for r in w.image_list.model.records] == [r.path for r in recs]
    listed = w.image_list.model.records[w.image_list.model.row_of(recs[1].id)]
    assert listed.status is ImageStatus.UNREADABLE and "not found" in (listed.reason or "")
    w.close()


def test_a_new_folder_of_10000_files_streams_into_the_list(qtbot, tmp_path):
    """A new project: the folder is read off the GUI thread and the list grows chunk by chunk; the
    first image is chosen from the first chunk, before the scan ends; the list is complete after."""
    from PIL import Image

    from detector.store import Project

    folder = tmp_path / "big"
    folder.mkdir()
    seed = folder / "a_seed.png"
    Image.new("RGB", (8, 6), (200, 30, 30)).save(seed)
    for i in range(9_999):
        d = folder / f"d{i % 20:02d}"
        d.mkdir(exist_ok=True)
        os.link(seed, d / f"im{i:05d}.png")
    p = Project(folder)
    w = MainWindow()
    qtbot.addWidget(w)
    seen = []  # (rows listed, image chosen) each time a chunk arrives
    real = w.folder._on_new_files

    def spy(project, records):
        real(project, records)
        seen.append((w.image_list.model.rowCount(), w.current_image_id))

    w.folder._on_new_files = spy
    with qtbot.waitSignal(w.scanned, timeout=60_000) as scan:
        w.set_project(p)
        assert w.image_list.model.rowCount() == 0  # nothing known yet, and the window is up
    assert scan.args[0].added == 10_000 and len(seen) == 5
    assert seen[0][0] == 2_000 and seen[0][1] is not None  # chosen while 8,000 were still to come
    assert w.image_list.model.rowCount() == 10_000 and len({r.id for r in w.image_list.model.records}) == 10_000
    qtbot.waitUntil(lambda: w.canvas.has_image, timeout=10_000)
    assert w.current_image_id == seen[0][1]
    w.close()


def test_auto_contrast_shows_dim_images_stretched_and_is_kept_with_the_project(qtbot, tmp_path):
    """A dim fluorescence-like image (nuclei at 30 of 255) is shown stretched, in the list too;
    View > Auto contrast off shows it as stored without losing the zoom; the project keeps it."""
    from PIL import Image
    from PySide6.QtGui import QIcon

    from detector.store import Project

    folder = tmp_path / "dim"
    folder.mkdir()
    a = np.full((90, 120, 3), 3, np.uint8)
    a[20:50, 30:70] = 30
    Image.fromarray(a).save(folder / "cells.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(
        folder / "photo.png")
    p = Project(folder)
    p.scan()
    w = MainWindow(p)
    qtbot.addWidget(w)
    w.show()
    qtbot.waitUntil(lambda: w.canvas.has_image, timeout=5000)

    def shown(x=40, y=30):
        return w.canvas._pixmap_item.pixmap().toImage().pixelColor(x, y).red()

    assert w.acts.auto_contrast.isChecked() and "dim" in w.acts.auto_contrast.text()
    assert shown() == 255 and shown(5, 5) == 0  # stretched: the cells white, the background black
    model = w.image_list.model
    qtbot.waitUntil(lambda: isinstance(model.data(model.index(0), Qt.ItemDataRole.DecorationRole), QIcon))
    icon = model.data(model.index(0), Qt.ItemDataRole.DecorationRole).pixmap(48, 48).toImage()
    assert icon.pixelColor(24, 18).red() == 255  # the thumbnail as the canvas shows it
    w.canvas.scale(3, 3)
    zoom = w.canvas.transform().m11()
    w.acts.auto_contrast.trigger()  # off
    qtbot.waitUntil(lambda: shown() == 30, timeout=5000)
    assert shown(5, 5) == 3 and w.canvas.transform().m11() == zoom  # as stored, same zoom
    assert p.get_meta("auto_contrast") == "off"
    qtbot.waitUntil(lambda: isinstance(model.data(model.index(0), Qt.ItemDataRole.DecorationRole), QIcon))
    icon = model.data(model.index(0), Qt.ItemDataRole.DecorationRole).pixmap(48, 48).toImage()
    assert icon.pixelColor(24, 18).red() == 30
    # A photo that spans the range is shown as stored either way.
    w.acts.auto_contrast.trigger()  # on again
    with qtbot.waitSignal(w.image_shown, timeout=5000):
        w.step(1)
    photo = np.asarray(Image.open(folder / "photo.png"))
    assert shown(7, 9) == photo[9, 7, 0]
    w.acts.auto_contrast.trigger()  # off, then a new window on the same project
    w.close()
    w2 = MainWindow(Project(folder))
    qtbot.addWidget(w2)
    assert not w2.acts.auto_contrast.isChecked() and not w2.loader.stretch
    w2.close()


def test_counts_of_images_read_in_the_singular_for_one():
    from app.image_list import n_images

    assert (n_images(1), n_images(0), n_images(2500)) == ("1 image", "0 images", "2,500 images")
