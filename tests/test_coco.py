import contextlib
import copy
import io
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detector import masks as M
from detector.coco import CocoError, export_project, import_coco
from detector.domain import ImageStatus
from detector.store import Project


def _coco(data):
    c = COCO()
    c.dataset = copy.deepcopy(data)
    with contextlib.redirect_stdout(io.StringIO()):
        c.createIndex()
    return c


def self_ap(data, iou_type):
    gt = _coco(data)
    res = []
    for a in data["annotations"]:
        r = {"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0}
        if iou_type == "bbox":
            r["bbox"] = a["bbox"]
        elif iou_type == "segm":
            r["segmentation"] = gt.annToRLE(a)
            r["segmentation"]["counts"] = r["segmentation"]["counts"]
        else:
            if a.get("num_keypoints", 0) == 0:
                continue
            r["keypoints"] = a["keypoints"]
        res.append(r)
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(res)
        ev = COCOeval(gt, dt, iou_type)
        if iou_type == "keypoints":
            k = len(data["categories"][-1]["keypoints"])
            ev.params.kpt_oks_sigmas = np.full(k, 0.05)
            ev.params.catIds = [c["id"] for c in data["categories"] if c.get("keypoints")]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats[0]


@pytest.mark.parametrize("polygons", [False, True])
def test_export_scores_ap_one_against_itself(project, demo, tmp_path, polygons):
    _, gt = demo
    import_coco(project, gt)
    out = tmp_path / "out.json"
    data = export_project(project, out, polygons=polygons)
    loaded = json.loads(out.read_text())
    assert loaded == json.loads(json.dumps(data))
    assert min(a["id"] for a in loaded["annotations"]) == 1
    assert len({a["id"] for a in loaded["annotations"]}) == len(loaded["annotations"])
    assert all(a["iscrowd"] == 0 for a in loaded["annotations"])
    for iou in ("bbox", "segm", "keypoints"):
        assert self_ap(loaded, iou) == pytest.approx(1.0), iou
    kite = [c for c in loaded["categories"] if c["name"] == "kite"][0]
    assert kite["skeleton"] == [[1, 2], [2, 4], [4, 3], [3, 1]]
    if polygons:
        assert all(isinstance(a["segmentation"], list) for a in loaded["annotations"])


def test_import_then_export_gives_the_same_annotations(project, demo, tmp_path):
    _, gt = demo
    report = import_coco(project, gt)
    assert report.annotations == len(json.loads(gt.read_text())["annotations"])
    assert all(r.status is ImageStatus.REVIEWED for r in project.images())
    out = export_project(project, tmp_path / "o.json")
    src = json.loads(gt.read_text())
    strip = lambda d: sorted((a["image_id"], a["category_id"], a["bbox"], a["area"],  # noqa: E731
                              a["segmentation"]["counts"], a.get("keypoints")) for a in d["annotations"])
    assert strip(out) == strip(src)
    # Importing the same file again adds nothing.
    assert import_coco(project, gt).skipped_duplicates == report.annotations


def test_polygons_keep_holes_and_parts():
    m = np.zeros((60, 80), dtype=np.uint8)
    m[5:45, 5:45] = 1
    m[15:35, 15:35] = 0  # a hole
    m[50:58, 60:75] = 1  # a second part
    polys = M.to_polygons(m)
    assert len(polys) == 2
    back = M.decode(M.from_polygons(polys, 60, 80))
    assert np.array_equal(back, m)  # pixel for pixel, the hole and both parts


def _hard_masks():
    """Masks that are hard to trace, each (name, mask)."""
    out = []

    def new(h=24, w=24):
        return np.zeros((h, w), np.uint8)

    m = new(); m[5, 5] = 1; out.append(("single pixel", m))
    m = new(); m[7, 2:20] = 1; out.append(("1-pixel line", m))
    m = new(); m[2:20, 9] = 1; out.append(("1-pixel column", m))
    m = new(); m[[3, 4, 5, 6], [3, 4, 5, 6]] = 1; out.append(("diagonal pixels", m))
    m = new(); m[4:10, 4:10] = 1; m[10:16, 10:16] = 1; out.append(("blocks touching at a corner", m))
    m = new(); m[2:22, 2:22] = 1; m[6:18, 6:18] = 0; m[9:15, 9:15] = 1; m[11:13, 11:13] = 0
    out.append(("hole, island, hole in the island", m))
    m = new(); m[3:21, 3:21] = 1; m[8, 8] = m[9, 9] = 0; out.append(("diagonally touching holes", m))
    m = new(); m[0:6, 18:24] = 1; m[18:24, 0:3] = 1; out.append(("touching the border", m))
    out.append(("whole image", np.ones((9, 13), np.uint8)))
    rng = np.random.default_rng(0)
    out.append(("many small parts", (rng.random((40, 40)) < 0.2).astype(np.uint8)))
    for k in range(40):
        h, w = (int(v) for v in rng.integers(2, 30, 2))
        out.append((f"noise {k}", (rng.random((h, w)) < rng.random()).astype(np.uint8)))
    return out


@pytest.mark.parametrize("name,mask", _hard_masks(), ids=[n for n, _ in _hard_masks()])
def test_polygons_fill_back_to_the_same_pixels(name, mask):
    """Vertices on pixel corners: pycocotools rasterises the polygons to exactly the mask."""
    polys = M.to_polygons(mask)
    h, w = mask.shape
    back = M.decode(M.from_polygons(polys, h, w)) if polys else np.zeros_like(mask)
    assert np.array_equal(back, mask), name


def test_polygon_export_matches_the_rle_ground_truth(project, demo, tmp_path):
    """Exported polygons score AP 1 against the original RLE masks, and each one's filled area is
    the written area."""
    from pycocotools import mask as mu

    _, gt = demo
    import_coco(project, gt)
    data = export_project(project, tmp_path / "p.json", polygons=True)
    rle = export_project(project, tmp_path / "r.json")
    for a in data["annotations"]:
        im = next(i for i in data["images"] if i["id"] == a["image_id"])
        seg = a["segmentation"]
        if isinstance(seg, dict):  # an empty mask has no outline: written as its (empty) RLE
            assert a["area"] == 0
            continue
        filled = mu.area(mu.merge(mu.frPyObjects(seg, im["height"], im["width"])))
        assert filled == a["area"]
    truth = {a["id"]: a for a in rle["annotations"]}
    size = {i["id"]: (i["height"], i["width"]) for i in data["images"]}

    def as_rle(seg, image_id):  # loadRes wants RLE results; polygons are rasterised by pycocotools
        return seg if isinstance(seg, dict) else mu.merge(mu.frPyObjects(seg, *size[image_id]))

    res = [{"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0,
            "segmentation": as_rle(a["segmentation"], a["image_id"])} for a in data["annotations"]]
    with contextlib.redirect_stdout(io.StringIO()):
        from pycocotools.coco import COCO

        g = COCO()
        g.dataset = json.loads(json.dumps(rle))
        g.createIndex()
        ev = COCOeval(g, g.loadRes(res), "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ev.stats[0] >= 0.99 and len(truth) == len(res)


def _write(folder, data, name="in.json"):
    p = folder / name
    p.write_text(json.dumps(data))
    return p


def _rect(x, y, w, h):
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def _quirky(folder):
    """A file with the quirks real tools write (labelme, Roboflow, CVAT, Label Studio, X-AnyLabeling)."""
    (folder / "JPEGImages").mkdir()
    Image.new("RGB", (50, 40)).save(folder / "JPEGImages" / "a.jpg")
    Image.new("RGB", (50, 40)).save(folder / "b.png")
    m = np.zeros((40, 50), dtype=np.uint8, order="F")
    m[10:20, 10:30] = 1
    counts, cur, run = [], 0, 0
    for v in m.flatten(order="F"):
        if v != cur:
            counts.append(run)
            run, cur = 0, v
        run += 1
    counts.append(run)
    return {
        "info": {"year": "2024"},
        "images": [{"id": 0, "file_name": "..\\label\\a.jpg", "width": 50, "height": 40},
                   {"id": 1, "file_name": "./b.png", "width": 50, "height": 40, "extra": 1}],
        "categories": [{"id": 0, "name": "shapes-dataset", "supercategory": "none"},
                       {"id": 1, "name": "box", "supercategory": "shapes-dataset"},
                       {"id": 2, "name": "pt", "keypoints": ["left_eye", "right_eye"], "skeleton": []}],
        "annotations": [
            {"id": 0, "image_id": 0, "category_id": 1, "bbox": [10, 10, 20, 10], "area": 200,
             "segmentation": _rect(10, 10, 20, 10), "iscrowd": 0, "attributes": {"x": 1}},
            {"id": 0, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 10], "area": 999,
             "segmentation": {"size": [40, 50], "counts": counts}, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "segmentation": [],
             "iscrowd": 0, "type": "rectangle"},
            {"id": 3, "image_id": 1, "category_id": 2, "bbox": [1, 1, 30, 30],
             "segmentation": _rect(1, 1, 30, 30), "iscrowd": 0,
             "keypoints": [5, 5, 2, 17, 9, 0], "num_keypoints": 1},
        ],
    }


def test_import_accepts_quirks_and_reports_them(tmp_path):
    data = _quirky(tmp_path)
    src = _write(tmp_path, data)
    with Project(tmp_path) as p:
        p.scan()
        report = import_coco(p, src)
        text = report.summary()
        assert report.annotations == 4
        assert "shapes-dataset" in text and "looked up by name" in text
        assert "duplicate annotation ids" in text and "recomputed" in text
        assert "v=0" in text and "uncompressed RLE" in text
        assert sorted(c.name for c in p.categories()) == ["box", "pt"]
        a = p.image_by_path("JPEGImages/a.jpg")
        inst = p.instances(a.id)
        assert len(inst) == 1 and inst[0].box == (10, 10, 30, 20)
        b = p.image_by_path("b.png")
        by_cat = {}
        for i in p.instances(b.id):
            by_cat.setdefault(p.category(i.category_id).name, []).append(i)
        assert M.area(by_cat["box"][0].mask) == 200
        assert by_cat["box"][1].mask is None  # segmentation [] = a plain box
        assert by_cat["pt"][0].keypoints == ((5.0, 5.0, 2), (0.0, 0.0, 0))
        out = export_project(p)
        assert self_ap(out, "bbox") == pytest.approx(1.0)
        assert self_ap(out, "segm") == pytest.approx(1.0)


def test_all_crowd_file_becomes_instances(tmp_path):
    data = _quirky(tmp_path)
    for a in data["annotations"]:
        a["iscrowd"] = 1
    with Project(tmp_path) as p:
        p.scan()
        report = import_coco(p, _write(tmp_path, data))
        assert "iscrowd=1" in report.summary()
        assert not any(i.crowd for r in p.images() for i in p.instances(r.id))


BAD = {
    "not json": lambda d: "{nope",
    "top level list": lambda d: [],
    "missing images": lambda d: {k: v for k, v in d.items() if k != "images"},
    "images not list": lambda d: {**d, "images": {}},
    "duplicate image id": lambda d: {**d, "images": d["images"] + [dict(d["images"][0])]},
    "unknown image": lambda d: {**d, "annotations": d["annotations"] + [
        {"id": 9, "image_id": 77, "category_id": 1, "bbox": [0, 0, 1, 1]}]},
    "unknown category": lambda d: {**d, "annotations": d["annotations"] + [
        {"id": 9, "image_id": 1, "category_id": 55, "bbox": [0, 0, 1, 1]}]},
    "rle size": lambda d: {**d, "annotations": [
        {**d["annotations"][1], "segmentation": {"size": [10, 10], "counts": [100]}}]},
    "keypoint length": lambda d: {**d, "annotations": [{**d["annotations"][3], "keypoints": [1, 2, 2]}]},
    "skeleton range": lambda d: {**d, "categories": d["categories"][:2] + [
        {**d["categories"][2], "skeleton": [[1, 5]]}]},
    "outside root": lambda d: {**d, "images": d["images"] + [
        {"id": 5, "file_name": "/etc/passwd.png", "width": 1, "height": 1}]},
    "dotdot": lambda d: {**d, "images": d["images"] + [
        {"id": 5, "file_name": "../../secret.png", "width": 1, "height": 1}]},
    "bbox type": lambda d: {**d, "annotations": [{**d["annotations"][0], "bbox": "10,10"}]},
    "wrong size": lambda d: {**d, "images": [{**d["images"][0], "width": 51}, d["images"][1]]},
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_files_are_rejected_whole_and_project_unchanged(tmp_path, case):
    data = _quirky(tmp_path)
    with Project(tmp_path) as p:
        p.scan()
        good = _write(tmp_path, {**data, "annotations": data["annotations"][:1]}, "good.json")
        import_coco(p, good)
        before = (p.categories(), p.images(), [p.instances(r.id) for r in p.images()])
        bad = BAD[case](copy.deepcopy(data))
        path = tmp_path / "bad.json"
        path.write_text(bad if isinstance(bad, str) else json.dumps(bad))
        with pytest.raises(CocoError) as e:
            import_coco(p, path)
        assert "bad.json" in str(e.value)
        assert (p.categories(), p.images(), [p.instances(r.id) for r in p.images()]) == before
