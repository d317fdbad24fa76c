"""Polygon export: how long it takes against RLE export (the named baseline), and whether the
polygons give the masks back.

The real nuclei (98 images, 5,031 masks) are imported into a project and exported both ways; the
polygon file is scored against the project's RLE ground truth with pycocotools (segm AP, maxDets
as the densest image needs) and every polygon's filled area is compared with the RLE area.

    python bench/bench_export.py [--nuclei DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pycocotools import mask as mask_utils  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

from detector.coco import import_coco  # noqa: E402
from detector.formats import export_file  # noqa: E402
from detector.store import Project  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nuclei", default=str(ROOT.parent / "shared" / "data" / "nuclei"))
    args = ap.parse_args()
    source = Path(args.nuclei)
    data = json.loads((source / "annotations.json").read_text())
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        folder = tmp / "nuclei"
        folder.mkdir()
        for im in data["images"]:
            name = Path(im["file_name"]).name
            (folder / name).symlink_to(source / "images" / name)
            im["file_name"] = name
        (tmp / "gt.json").write_text(json.dumps(data))
        with Project(folder) as project:
            project.scan()
            import_coco(project, tmp / "gt.json")
            t = time.perf_counter()
            export_file(project, tmp / "rle.json", "coco")
            rle_s = time.perf_counter() - t
            t = time.perf_counter()
            export_file(project, tmp / "poly.json", "coco", polygons=True)
            poly_s = time.perf_counter() - t
        gt, poly = COCO(str(tmp / "rle.json")), json.loads((tmp / "poly.json").read_text())
        worst = 0
        for a in poly["annotations"]:
            im = gt.imgs[a["image_id"]]
            rles = mask_utils.frPyObjects(a["segmentation"], im["height"], im["width"])
            worst = max(worst, abs(int(mask_utils.area(mask_utils.merge(rles))) - int(a["area"])))
        for a in poly["annotations"]:
            a["score"] = 1.0
        dt = gt.loadRes(poly["annotations"])
        ev = COCOeval(gt, dt, "segm")
        dense = max(len(gt.getAnnIds(imgIds=[i])) for i in gt.getImgIds())
        ev.params.maxDets = [1, 10, max(100, dense)]
        ev.evaluate()
        ev.accumulate()
        p = ev.eval["precision"][:, :, :, 0, -1]
        ap_all = float(p[p > -1].mean())
    print(json.dumps({"images": len(data["images"]), "annotations": len(data["annotations"]),
                      "rle_export_s": round(rle_s, 2), "polygon_export_s": round(poly_s, 2),
                      "polygon_vs_rle": round(poly_s / rle_s, 1), "polygon_segm_AP_vs_rle": round(ap_all, 4),
                      "largest_area_difference_px": worst}))


if __name__ == "__main__":
    main()
