"""Formats: each one's export, imported into a fresh copy of the folder and exported as COCO again,
scores AP 1.0 against the original for what the format carries; files as the other tools write
them are read; a malformed file is refused whole and the project is left as it was."""

import contextlib
import io
import json
import shutil

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detector import cli
from detector import masks as M
from detector.coco import export_project, import_coco
from detector.formats import FORMATS, FormatError, detect, export_file, import_file
from detector.store import Project
from detector.synthetic import generate


def _ap(gt: dict, dt: dict, iou: str) -> float:
    """AP of ``dt``'s annotations (as detections, score 1) against ``gt``, matched by file name."""
    g = COCO()
    with contextlib.redirect_stdout(io.StringIO()):
        g.dataset = json.loads(json.dumps(gt))
        g.createIndex()
        ids = {im["file_name"]: im["id"] for im in gt["images"]}
        cats = {c["name"]: c["id"] for c in gt["categories"]}
        dt_img = {im["id"]: im["file_name"] for im in dt["images"]}
        dt_cat = {c["id"]: c["name"] for c in dt["categories"]}
        res = []
        for a in dt["annotations"]:
            r = {"image_id": ids[dt_img[a["image_id"]]], "category_id": cats[dt_cat[a["category_id"]]], "score": 1.0,
                 "bbox": a["bbox"]}
            if iou == "segm":
                r["segmentation"] = a["segmentation"]
            if iou == "keypoints":
                if not a.get("num_keypoints"):
                    continue
                r["keypoints"] = a["keypoints"]
            res.append(r)
        ev = COCOeval(g, g.loadRes(res), iou)
        if iou == "keypoints":
            k = [c for c in gt["categories"] if c.get("keypoints")][0]
            ev.params.kpt_oks_sigmas = np.full(len(k["keypoints"]), 0.05)
            ev.params.catIds = [k["id"]]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0])


@pytest.fixture
def labelled(tmp_path):
    folder = tmp_path / "src"
    gt = generate(folder, n_images=6, seed=3, size=(160, 120))
    p = Project(folder)
    p.scan()
    import_coco(p, gt)
    original = export_project(p)
    yield p, folder, original
    p.close()


def _round_trip(tmp_path, folder, fmt, out, **options):
    fresh = tmp_path / "copy"
    shutil.copytree(folder, fresh, ignore=shutil.ignore_patterns(".loupe", "ground_truth.json"))
    with Project(fresh) as q:
        q.scan()
        summary = import_file(q, out, fmt)
        again = export_project(q)
    return summary, again


@pytest.mark.parametrize("fmt,task,carried", [
    ("yolo", "segment", ("bbox", "segm")),
    ("yolo", "detect", ("bbox",)),
    ("yolo", "pose", ("bbox", "keypoints")),
    ("voc", None, ("bbox",)),
    ("labelme", None, ("bbox", "segm", "keypoints")),
])
def test_export_then_import_gives_the_same_annotations(labelled, tmp_path, fmt, task, carried):
    p, folder, original = labelled
    out = tmp_path / f"out-{fmt}"
    export_file(p, out, fmt, **({"task": task} if task else {}))
    assert detect(out) == fmt  # recognised without being told
    summary, again = _round_trip(tmp_path, folder, fmt, out)
    assert "imported" in summary
    assert len(again["annotations"]) == len(original["annotations"])
    for iou in carried:
        assert _ap(original, again, iou) == pytest.approx(1.0), (fmt, iou)


def test_yolo_files_as_ultralytics_writes_them(tmp_path):
    """A hand-written Ultralytics dataset: train/val splits, names as a dict, a box and a polygon."""
    folder = tmp_path / "ds"
    (folder / "images" / "train").mkdir(parents=True)
    (folder / "images" / "val").mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (200, 100)).save(folder / "images" / "train" / "a.jpg")
    Image.new("RGB", (200, 100)).save(folder / "images" / "val" / "b.jpg")
    (folder / "labels" / "train").mkdir(parents=True)
    (folder / "labels" / "val").mkdir(parents=True)
    (folder / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames:\n  0: cat\n  1: dog\n")
    (folder / "labels" / "train" / "a.txt").write_text("0 0.5 0.5 0.2 0.4\n")
    (folder / "labels" / "val" / "b.txt").write_text("1 0.1 0.1 0.3 0.1 0.3 0.5 0.1 0.5\n\n")
    with Project(folder) as p:
        p.scan()
        print(import_file(p, folder))
        insts = {r.path: p.instances(r.id) for r in p.images()}
    (a,) = insts["images/train/a.jpg"]
    assert a.box == pytest.approx((80, 30, 120, 70)) and a.mask is None
    (b,) = insts["images/val/b.jpg"]
    assert b.box == pytest.approx((20, 10, 60, 50)) and M.area(b.mask) == 1600


def test_labelme_files_as_labelme_writes_them(tmp_path):
    from PIL import Image

    folder = tmp_path / "lm"
    folder.mkdir()
    Image.new("RGB", (64, 48)).save(folder / "x.png")
    shapes = [
        {"label": "person", "points": [[10, 10], [30, 10], [30, 40], [10, 40]], "group_id": 1, "shape_type": "polygon",
         "flags": {}},
        {"label": "nose", "points": [[20, 15]], "group_id": 1, "shape_type": "point", "flags": {}},
        {"label": "car", "points": [[40, 5], [60, 20]], "group_id": None, "shape_type": "rectangle", "flags": {}},
        {"label": "road", "points": [[0, 47], [63, 47]], "group_id": None, "shape_type": "line", "flags": {}},
    ]
    (folder / "x.json").write_text(json.dumps({"version": "5.2.1", "flags": {}, "shapes": shapes,
                                               "imagePath": "x.png", "imageData": "aGVsbG8=",
                                               "imageHeight": 48, "imageWidth": 64}))
    with Project(folder) as p:
        p.scan()
        summary = import_file(p, folder / "x.json")
        assert "line and linestrip" in summary
        cats = {c.name: c for c in p.categories()}
        insts = p.instances(p.images()[0].id)
    assert cats["person"].keypoints == ("nose",) and set(cats) == {"person", "car"}
    person = [i for i in insts if i.category_id == cats["person"].id][0]
    assert person.keypoints == ((20.0, 15.0, 2),) and M.area(person.mask) == 600
    car = [i for i in insts if i.category_id == cats["car"].id][0]
    assert car.box == (40, 5, 60, 20) and car.mask is None


def test_coco_results_come_back_as_predictions(labelled, tmp_path):
    """Results computed on our own export (as detectron2 or mmdetection write them) are imported as
    model predictions with their scores; a person's work is never replaced."""
    from detector.domain import MODEL, ImageStatus

    p, folder, _ = labelled
    first = p.images()[0]
    p.set_status(first.id, ImageStatus.NEW)
    ann = export_project(p, tmp_path / "export.json")  # its ids are the ones results refer to
    res = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9,
            "segmentation": a["segmentation"]} for a in ann["annotations"]]
    (tmp_path / "results.json").write_text(json.dumps(res))
    before = {r.id: p.instances(r.id) for r in p.images()}
    assert detect(tmp_path / "results.json") == "results"
    out = import_file(p, tmp_path / "results.json")  # ids from the project's last export
    assert "as predictions" in out
    new = [i for i in p.instances(first.id) if i.changed_by == MODEL]
    assert new and all(i.score == 0.9 for i in new)
    for r in p.images()[1:]:  # reviewed images are untouched
        assert p.instances(r.id) == before[r.id]
    # with an explicit dataset file, and a bad id refused whole
    res.append({"image_id": 999, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5})
    (tmp_path / "bad.json").write_text(json.dumps(res))
    with pytest.raises(FormatError, match=r"bad.json: \[.*\]: image_id 999"):
        import_file(p, tmp_path / "bad.json", gt=tmp_path / "export.json")


@pytest.mark.parametrize("fmt,make", [
    ("yolo", lambda d: ((d / "data.yaml").write_text("names: [a]\n"), (d / "labels").mkdir(),
                        (d / "labels" / "scene_0000.txt").write_text("0 0.5 0.5 0.2\n"))),
    ("yolo", lambda d: ((d / "data.yaml").write_text("names: [a]\n"), (d / "labels").mkdir(),
                        (d / "labels" / "scene_0000.txt").write_text("3 0.5 0.5 0.2 0.2\n"))),
    ("voc", lambda d: (d / "scene_0000.xml").write_text("<annotation><filename>scene_0000.png</filename>"
                                                        "<object><name>a</name></object></annotation>")),
    ("voc", lambda d: (d / "scene_0000.xml").write_text("<annotation><filename>nope.png</filename></annotation>")),
    ("labelme", lambda d: (d / "x.json").write_text(json.dumps({"shapes": [{"label": "a", "points": [[1, 2]],
                                                                           "shape_type": "polygon"}],
                                                                "imagePath": "scene_0000.png"}))),
    ("labelme", lambda d: (d / "x.json").write_text(json.dumps({"shapes": [{"label": "nose", "points": [[1, 2]],
                                                                           "shape_type": "point", "group_id": 7}],
                                                                "imagePath": "scene_0000.png"}))),
])
def test_a_malformed_file_is_refused_whole(labelled, tmp_path, fmt, make):
    p, folder, _ = labelled
    bad = tmp_path / "bad"
    bad.mkdir()
    # a good file first, so that a partial import would show
    (bad / "aaa.xml").write_text("<annotation><filename>scene_0001.png</filename><object><name>zz</name>"
                                 "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox>"
                                 "</object></annotation>") if fmt == "voc" else None
    make(bad)
    before = {r.id: p.instances(r.id) for r in p.images()}
    cats = p.categories()
    with pytest.raises(FormatError) as err:
        import_file(p, bad, fmt)
    assert str(bad) in str(err.value)
    assert {r.id: p.instances(r.id) for r in p.images()} == before and p.categories() == cats


def test_the_command_line_knows_every_format():
    assert set(cli.IMPORT_FORMATS) == set(FORMATS)
    assert set(cli.EXPORT_FORMATS) == {n for n, f in FORMATS.items() if f.write}


def test_command_line_yolo_export_and_import(labelled, tmp_path):
    p, folder, original = labelled
    assert cli.main(["export", str(folder), "-o", str(tmp_path / "y"), "--format", "yolo",
                     "--yolo-task", "detect"]) == 0
    fresh = tmp_path / "fresh"
    shutil.copytree(folder, fresh, ignore=shutil.ignore_patterns(".loupe", "ground_truth.json"))
    assert cli.main(["import", str(fresh), str(tmp_path / "y")]) == 0
    with Project(fresh) as q:
        assert len(export_project(q)["annotations"]) == len(original["annotations"])
