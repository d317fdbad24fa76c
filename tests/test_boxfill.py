"""A drawn box gets a mask: the model's, or a classical cut (GrabCut, a threshold) where that fits
the box better, and without any model at all; in the real window too."""

import json

import cv2
import numpy as np

from detector import boxfill as BF
from detector import masks as M
from detector.coco import import_coco
from detector.domain import MODEL
from detector.synthetic import generate


def _iou(rle, truth: np.ndarray) -> float:
    m = M.decode(rle).astype(bool)
    return float((m & truth).sum() / max((m | truth).sum(), 1))


def _truth(gt_path):
    """{file name: [(xyxy box, mask)]} of a synthetic folder's ground truth."""
    data = json.loads(gt_path.read_text())
    files = {im["id"]: (im["file_name"], im["height"], im["width"]) for im in data["images"]}
    out = {}
    for a in data["annotations"]:
        name, h, w = files[a["image_id"]]
        x, y, bw, bh = a["bbox"]
        mask = M.decode(M.from_polygons(a["segmentation"], h, w) if isinstance(a["segmentation"], list)
                        else a["segmentation"]).astype(bool)
        out.setdefault(name, []).append(((x, y, x + bw, y + bh), mask))
    return out


def test_without_a_model_the_classical_cuts_fill_synthetic_shapes(tmp_path):
    gt = generate(tmp_path / "s", n_images=6, seed=11, size=(160, 120))
    ious = []
    for name, objects in _truth(gt).items():
        rgb = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(tmp_path / "s" / name).convert("RGB"))
        for box, mask in objects:
            rle, source = BF.fill_box(rgb, box)
            assert source in ("grabcut", "threshold", "wide threshold", "half level")
            ious.append(_iou(rle, mask))
    # Occluded shapes included; a box filled with the box itself would score ~0.6-0.8 on circles
    # and triangles and far less on what an object in front hides.
    assert np.mean(ious) > 0.85 and np.mean(np.array(ious) >= 0.75) > 0.85


def _cells(n=12, seed=0, size=(160, 200)):
    """Dim bright blobs on a dark noisy ground (fluorescent nuclei), a few pixels apart, and their masks."""
    rng = np.random.default_rng(seed)
    h, w = size
    img = rng.normal(6, 2, size).clip(0, 255)
    masks = []
    yy, xx = np.mgrid[0:h, 0:w]
    while len(masks) < n:
        cy, cx = rng.uniform(15, h - 15), rng.uniform(15, w - 15)
        a, b = rng.uniform(5, 10), rng.uniform(5, 10)
        m = ((yy - cy) / a) ** 2 + ((xx - cx) / b) ** 2 <= 1
        near = ((yy - cy) / (a + 3)) ** 2 + ((xx - cx) / (b + 3)) ** 2 <= 1
        if any((k & near).any() for k in masks):
            continue
        img[m] = rng.uniform(25, 40) + rng.normal(0, 2, m.sum())
        masks.append(m)
    rgb = np.repeat(img.clip(0, 255).astype(np.uint8)[..., None], 3, axis=2)
    return rgb, masks


def _box(mask):
    ys, xs = np.nonzero(mask)
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


def test_a_bad_model_mask_is_replaced_and_a_good_one_kept():
    rgb, masks = _cells()
    for truth in masks:
        box = _box(truth)
        x0, y0, x1, y1 = map(int, box)
        blob = np.zeros(truth.shape, np.uint8)  # a model that paints a blob in one corner
        blob[y0:y0 + max(1, (y1 - y0) // 3), x0:x0 + max(1, (x1 - x0) // 3)] = 1
        rle, source = BF.fill_box(rgb, box, M.encode(blob))
        assert source != "model" and _iou(rle, truth) > _iou(M.encode(blob), truth) + 0.3
        rle, source = BF.fill_box(rgb, box, M.encode(truth))  # a model that is right stays
        assert source == "model" and _iou(rle, truth) == 1.0
        rle, source = BF.fill_box(rgb, box, None)  # no model: the cut still finds the cell
        assert _iou(rle, truth) > 0.6


def test_a_box_in_a_big_photo_is_cut_on_a_smaller_copy():
    h, w = 1800, 2400
    rgb = np.full((h, w, 3), (40, 90, 40), np.uint8)  # grass
    truth = np.zeros((h, w), np.uint8)
    cv2.ellipse(truth, (1200, 900), (700, 500), 20, 0, 360, 1, -1)
    rgb[truth > 0] = (200, 60, 50)
    rgb = (rgb + np.random.default_rng(1).normal(0, 8, rgb.shape)).clip(0, 255).astype(np.uint8)
    x0, y0, x1, y1 = box = _box(truth > 0)
    cut = BF.grabcut(rgb, box)  # cut on a copy of at most MAX_SIDE px, the mask at full size
    assert cut.crop.shape == (int(y1 - y0), int(x1 - x0)) and BF.box_fit(cut, box) > 0.95
    rle, _ = BF.fill_box(rgb, box)
    assert _iou(rle, truth > 0) > 0.95
    assert BF.box_fit(None, (0, 0, 5, 5)) == 0.0
    flat = np.zeros((40, 40, 3), np.uint8)  # nothing to find: an empty or whole-box cut, no error
    rle, _ = BF.fill_box(flat, (10, 10, 30, 30))
    assert M.area(rle) in (0, 400)


def unlabelled_scene(tmp_path):
    """(folder, a COCO file with the categories and every image's objects but the last image's,
    that image's name, its [(box, mask)] objects): a synthetic folder to draw on."""
    folder = tmp_path / "f"
    gt = generate(folder, n_images=4, seed=21, size=(200, 150))
    data = json.loads(gt.read_text())
    target_name = data["images"][-1]["file_name"]
    objects = _truth(gt)[target_name]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != data["images"][-1]["id"]]
    part = tmp_path / "part.json"
    part.write_text(json.dumps(data))  # the categories, and nothing on the image drawn on
    return folder, part, target_name, objects


def opened_on(qtbot, p, part, target_name, open_window, tool):
    """(the window on ``target_name`` with ``tool`` and the first category, its image id), after
    scanning the folder and importing ``part``."""
    p.scan()
    import_coco(p, part)
    target = next(r.id for r in p.images() if r.path == target_name)
    w = open_window(p)
    with qtbot.waitSignal(w.image_shown, timeout=10_000):
        w.show_image(target)
    w.acts.set_tool(tool)
    w.editor.current_category = next(iter(w.editor.categories))
    return w, target


def test_the_box_tool_fills_a_mask_before_any_model_exists(qtbot, tmp_path, open_window):
    from app.canvas import Tool
    from detector.store import Project
    from test_app_editing import drag

    folder, part, target_name, objects = unlabelled_scene(tmp_path)
    with Project(folder) as p:
        w, target = opened_on(qtbot, p, part, target_name, open_window, Tool.BOX)
        assert p.active_model() is None
        # The biggest object, drawn as a box with the Box tool.
        box, truth = max(objects, key=lambda o: o[1].sum())
        drag(w.canvas, box[:2], box[2:])
        qtbot.waitUntil(lambda: any(i.mask is not None for i in p.instances(target)), timeout=60_000)
        (inst,) = p.instances(target)
        assert inst.changed_by != MODEL and _iou(inst.mask, truth) > 0.8
        w.editor.stack().undo()  # the fill is its own step: undo leaves the plain box
        (inst,) = p.instances(target)
        assert inst.mask is None


def test_blurred_cells_get_their_edge_from_the_surroundings():
    """Cells with soft edges (a blurred microscope image): Otsu's level of a tight box, which holds
    little background, cuts them too wide; the level taken with the surroundings, or halfway to
    the ring around the box, finds the edge, and the fit to the box picks one of them."""
    rgb, masks = _cells(seed=2)
    rgb = cv2.GaussianBlur(rgb, (0, 0), 1.5)
    tight, best, picked = [], [], set()
    for truth in masks:
        box = _box(truth)
        tight.append(_iou(BF.threshold_cut(rgb, box).rle(*truth.shape), truth))
        rle, source = BF.fill_box(rgb, box)
        best.append(_iou(rle, truth))
        picked.add(source)
        for cut in (BF.wide_threshold_cut(rgb, box), BF.half_level_cut(rgb, box)):
            assert cut.crop.shape == truth[int(box[1]):int(box[3]), int(box[0]):int(box[2])].shape
    assert np.mean(tight) < 0.85 and np.mean(best) > 0.93
    assert picked & {"wide threshold", "half level"}
    dark = 255 - rgb  # dark cells on a bright ground: the same edges
    rle, _ = BF.fill_box(dark, _box(masks[0]))
    assert _iou(rle, masks[0]) > 0.85
    assert BF.half_level_cut(rgb, (3, 3, 4, 4)).crop.shape == (1, 1)  # too small to cut: empty
    assert not BF.wide_threshold_cut(rgb, (3, 3, 4, 4)).crop.any()


def test_the_same_box_gets_the_same_grabcut_mask():
    """GrabCut's colour models start from a random draw (OpenCV's RNG): the fill seeds it, so a box
    drawn again, or priced twice by the held-out evaluation, gets the same mask."""
    rng = np.random.default_rng(26)  # a noisy blob whose GrabCut mask follows OpenCV's RNG unseeded
    img = rng.normal(100, 40, (100, 100, 3))
    yy, xx = np.mgrid[0:100, 0:100]
    img[(yy - 50) ** 2 / 400 + (xx - 50) ** 2 / 600 <= 1] += rng.normal(30, 40, 3)
    rgb = np.clip(img, 0, 255).astype(np.uint8)
    masks = []
    for seed in (1, 2):
        cv2.setRNGSeed(seed)  # whatever state another caller left
        masks.append(BF.grabcut(rgb, (20, 25, 80, 75)).crop)
    assert masks[0].any() and (masks[0] == masks[1]).all()
