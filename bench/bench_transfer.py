"""Fine-tuning recipe from learned weights: which backbone stages to train, and BatchNorm statistics.

Pretrain a model on one synthetic set (A: 40 scenes at 192x144, from random weights), then
fine-tune it on a few images of a different set (B: 8 scenes at 320x240, other seeds, so other
sizes, colours and layouts) in four ways, the same steps and seed each, and score each on 30 unseen
B images:
- all stages trainable, BatchNorm in training mode (batch statistics from 2 images);
- stem and first stage frozen (torchvision's reference: 3 trainable stages);
- BatchNorm frozen in the backbone (running statistics from pretraining; affine still trains);
- both.
Prints one JSON line per variant.

    python bench/bench_transfer.py [--pretrain-steps 300] [--steps 100] [--size 128] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

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
    ap.add_argument("--pretrain-steps", type=int, default=300)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--device", default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    small = {"anchor_sizes": (8, 16, 32, 64, 128), "box_batch_size_per_image": 64}
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        a_dir, b_dir, test_dir = tmp / "a", tmp / "b", tmp / "test"
        gt_a = generate(a_dir, n_images=40, seed=100, size=(192, 144))
        gt_b = generate(b_dir, n_images=8, seed=200, size=(320, 240))
        gt_test = generate(test_dir, n_images=30, seed=300, size=(320, 240))
        base = dict(backbone="resnet18", batch_size=2, min_size=args.size, max_size=args.size * 2, holdout=0.0,
                    device=args.device, seed=args.seed, model_overrides=small, profile="reference")
        with Project(a_dir) as p:
            p.scan()
            import_coco(p, gt_a)
            t = time.perf_counter()
            train_project(p, TrainConfig(weights="none", iterations=args.pretrain_steps, **base), tmp / "a.pt")
            print(json.dumps({"pretrain_s": round(time.perf_counter() - t, 1)}), flush=True)
        variants = [("all stages, BN training", 5, False), ("3 stages, BN training", 3, False),
                    ("all stages, BN frozen", 5, True), ("3 stages, BN frozen (the default)", 3, True)]
        for name, layers, freeze in variants:
            with Project(b_dir, tmp / f"b-{len(name)}-{layers}-{freeze}.db") as p:
                p.scan()
                import_coco(p, gt_b)
                cfg = TrainConfig(weights=str(tmp / "a.pt"), iterations=args.steps, trainable_layers=layers,
                                  freeze_bn=freeze, **base)
                t = time.perf_counter()
                r = train_project(p, cfg, tmp / "b.pt")
                train_s = time.perf_counter() - t
                det = load_detector(p, str(tmp / "b.pt"))
            by_name = {c.name: c for c in det.categories}
            _, images, _, _ = plan_import(read_json(gt_test), str(gt_test), test_dir)
            items = [(ImageRecord(im.path, im.width, im.height), test_dir / im.path,
                      [i.with_(category_id=by_name[n].id) for n, i in im.instances]) for im in images.values()]
            m = evaluate_detector(det, items, args.device)
            print(json.dumps({"variant": name, "steps": r.steps, "optimizer": r.optimizer, "lr": r.lr,
                              "train_s": round(train_s, 1), "unseen_segm_AP": m["segm"]["AP"],
                              "unseen_segm_AP50": m["segm"]["AP50"], "unseen_bbox_AP": m["bbox"]["AP"],
                              "torch": torch.__version__}), flush=True)


if __name__ == "__main__":
    main()
