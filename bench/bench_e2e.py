"""End-to-end labeling loop on synthetic data: random weights -> review N images -> train -> AP.

For N in (10, 25, 50): N synthetic images are 'reviewed' from ground truth, a model is trained from
random initialisation, and its COCO AP is measured on 30 unseen images. Prints one JSON line per N.

    python bench/bench_e2e.py [--steps 200] [--backbone resnet18] [--size 128] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detector.coco import import_coco, plan_import, read_json  # noqa: E402
from detector.domain import ImageRecord  # noqa: E402
from detector.evaluation import evaluate_detector  # noqa: E402
from detector.inference import load_detector  # noqa: E402
from detector.store import Project  # noqa: E402
from detector.synthetic import generate  # noqa: E402
from detector.training import TrainConfig, train_project  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", default="10,25,50")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--device", default=None)
    ap.add_argument("--test-images", type=int, default=30)
    ap.add_argument("--rois", type=int, default=128, help="sampled RoIs per image (torchvision: 512)")
    ap.add_argument("--lr", default="", help="default: the trainer's; a comma list gives one per round "
                                              "(the last repeats)")
    ap.add_argument("--optimizer", default="", help="sgd or adamw; default: the trainer's; a comma list "
                                                     "gives one per round")
    ap.add_argument("--no-augment", action="store_true")
    ap.add_argument("--seed", type=int, default=0, help="initial weights, sampling, augmentation")
    ap.add_argument("--chain", action="store_true",
                    help="the labeling loop in rounds: each N adds images to the last round's and "
                         "starts from its model (the app's default 'active model' start)")
    args = ap.parse_args()
    overrides = dict(anchor_sizes=(8, 16, 32, 64, 128)) if args.size <= 256 else {}
    if args.rois:
        overrides.update(rpn_batch_size_per_image=args.rois, box_batch_size_per_image=args.rois)
    with tempfile.TemporaryDirectory() as tmp:
        test = Path(tmp) / "unseen"
        test_gt = generate(test, n_images=args.test_images, seed=999, size=(args.size * 4 // 3, args.size))
        previous = None
        for k, n in enumerate(int(v) for v in args.n.split(",")):
            lr, optimizer = _per_round(args.lr, k), _per_round(args.optimizer, k)
            folder = Path(tmp) / f"n{n}"
            # One seed for every round in a chain: the first images of a larger set are the smaller set's.
            gt = generate(folder, n_images=n, seed=0 if args.chain else n, size=(args.size * 4 // 3, args.size))
            with Project(folder) as project:
                project.scan()
                import_coco(project, gt)
                chained = args.chain and previous is not None
                cfg = TrainConfig(weights=str(previous) if chained else "none", backbone=args.backbone,
                                  iterations=args.steps, batch_size=args.batch_size, min_size=args.size,
                                  max_size=args.size * 2, holdout=0.0, device=args.device,
                                  lr=float(lr) if lr else None, optimizer=optimizer or None,
                                  augment=not args.no_augment, seed=args.seed,
                                  model_overrides=overrides)
                t = time.perf_counter()
                result = train_project(project, cfg, folder / "model.pt")
                train_s = time.perf_counter() - t
                det = load_detector(project, str(folder / "model.pt"))
                previous = folder / "model.pt"
            by_name = {c.name: c for c in det.categories}
            _, images, _, _ = plan_import(read_json(test_gt), str(test_gt), test)
            items = [(ImageRecord(im.path, im.width, im.height), test / im.path,
                      [i.with_(category_id=by_name[name].id) for name, i in im.instances])
                     for im in images.values()]
            metrics = evaluate_detector(det, items, args.device)
            print(json.dumps({"reviewed_images": n, "steps": result.steps, "batch": args.batch_size,
                              "backbone": args.backbone, "size": args.size, "rois": args.rois,
                              "lr": result.lr, "optimizer": result.optimizer,
                              "augment": not args.no_augment, "seed": args.seed,
                              "start": "last round's model" if chained else "random",
                              "train_s": round(train_s, 1),
                              "unseen_bbox_AP": metrics["bbox"]["AP"], "unseen_segm_AP": metrics["segm"]["AP"],
                              "unseen_segm_AP50": metrics["segm"]["AP50"],
                              "unseen_keypoint_AP": metrics.get("keypoints", {}).get("AP")}), flush=True)


def _per_round(values: str, k: int) -> str:
    items = [v.strip() for v in values.split(",")] if values else [""]
    return items[min(k, len(items) - 1)]


if __name__ == "__main__":
    main()
