"""The speed ladder from R-CNN to Mask R-CNN on one backbone, and RoI Pool vs RoI Align.

1. Seconds per image, same backbone (ResNet-50 FPN v2 layout, random weights), same images, the
   same region proposals for the first two rungs:
   - R-CNN style: every proposal is cut out of the image, warped to 224 x 224 and sent through
     the CNN trunk on its own (then a linear classifier). On a CPU this is timed on
     ``--rcnn-regions`` regions and scaled to the full proposal count (stated in the output).
   - Fast R-CNN style: the trunk and FPN run once per image; RoI Align cuts 7 x 7 features of the
     same proposals, then the box head classifies them.
   - Faster R-CNN / Mask R-CNN: the whole model, with learned proposals (RPN) and the mask head.
   Proposals for the first two come from the same RPN (its cost is in rung 3 only); the seed's
   figures (49 s / 2.3 s / 0.2 s, Girshick et al.) were on 2015 GPUs, with selective search.
2. RoI Pool vs RoI Align: two small models trained identically on synthetic scenes (same seed,
   data and steps) except for the region pooling (RoI Pool snaps boxes and bins to the feature
   grid; RoI Align samples bilinearly); mask and box AP on unseen images.

    python bench/bench_ladder.py [--device cpu] [--images 2] [--size 480] [--proposals 2000]
                                 [--train-steps 200] [--detections 100] [--smoke] [--no-speed] [--no-pooling]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align, roi_pool
from torchvision.ops.poolers import LevelMapper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detector.coco import import_coco, plan_import, read_json  # noqa: E402
from detector.domain import ImageRecord  # noqa: E402
from detector.evaluation import evaluate_detector  # noqa: E402
from detector.images import load_image  # noqa: E402
from detector.inference import Predictor, pick_device  # noqa: E402
from detector.model import ModelConfig, build_model  # noqa: E402
from detector.store import Project  # noqa: E402
from detector.synthetic import CATEGORIES, generate  # noqa: E402
from detector.training import Trainer, TrainConfig, collect_samples, with_start_defaults  # noqa: E402


class MultiScaleRoIPool(nn.Module):
    """torchvision's MultiScaleRoIAlign with RoI Pool (Fast R-CNN's quantised max pooling) inside."""

    def __init__(self, featmap_names: list[str], output_size: int):
        super().__init__()
        self.featmap_names, self.output_size = featmap_names, (output_size, output_size)

    def forward(self, x: dict[str, torch.Tensor], boxes: list[torch.Tensor],
                image_shapes: list[tuple[int, int]]) -> torch.Tensor:
        # float32, as the RoI Align poolers run under CPU bfloat16 autocast (no bfloat16 kernel)
        feats = [x[k].float() for k in self.featmap_names]
        max_h = max(s[0] for s in image_shapes)
        scales = [2.0 ** round(math.log2(f.shape[-2] / max_h)) for f in feats]
        mapper = LevelMapper(int(-math.log2(scales[0])), int(-math.log2(scales[-1])))
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], 1) for i, b in enumerate(boxes)])
        levels = mapper(boxes)
        out = feats[0].new_zeros((len(rois), feats[0].shape[1], *self.output_size))
        for lvl, (f, s) in enumerate(zip(feats, scales)):
            idx = torch.where(levels == lvl)[0]
            if len(idx):
                out[idx] = roi_pool(f, rois[idx].to(f.dtype), self.output_size, spatial_scale=s).to(out.dtype)
        return out


def use_roi_pool(model) -> None:
    rh = model.roi_heads
    names = ["0", "1", "2", "3"]
    rh.box_roi_pool = MultiScaleRoIPool(names, 7)
    rh.mask_roi_pool = MultiScaleRoIPool(names, 14)
    if rh.has_keypoint():
        rh.keypoint_roi_pool = MultiScaleRoIPool(names, 14)


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def speed_ladder(args, device, tmp: Path) -> dict:
    w, h = args.size * 4 // 3, args.size
    folder = tmp / "ladder"
    generate(folder, n_images=args.images, seed=21, size=(w, h))
    torch.manual_seed(0)
    cfg = ModelConfig(backbone=args.backbone, min_size=h, max_size=w, rpn_pre_nms_top_n_test=args.proposals,
                      rpn_post_nms_top_n_test=args.proposals, box_detections_per_img=args.detections)
    det = build_model(categories=CATEGORIES, weights="none", config=cfg)
    pred = Predictor(det, device, batch_size=1)
    model = pred.model
    arrays = [load_image(p) for p in sorted(folder.glob("*.png"))]
    amp = torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    trunk = model.backbone.body  # the ResNet stages, without FPN
    classifier = nn.Linear(2048 if args.backbone == "resnet50_v2" else 512, len(CATEGORIES) + 1).to(device)
    times = {"rcnn": [], "fast_rcnn": [], "faster_mask_rcnn": []}
    regions_timed = 0
    with torch.inference_mode(), amp:
        for k, a in enumerate([arrays[0]] + arrays):  # the first image warms up and is not counted
            x = pred.upload(a)
            images, _ = model.transform([x])
            feats = model.backbone(images.tensors)
            proposals, _ = model.rpn(images, feats)
            props = proposals[0][: args.proposals]
            n = len(props)
            # rung 3: the whole model as it ships (torchvision's 1000 proposals), with masks
            rpn = model.rpn
            saved = dict(rpn._pre_nms_top_n), dict(rpn._post_nms_top_n)
            rpn._pre_nms_top_n["testing"] = rpn._post_nms_top_n["testing"] = 1000
            _sync(device)
            t = time.perf_counter()
            pred.forward([a])
            _sync(device)
            t3 = time.perf_counter() - t
            rpn._pre_nms_top_n, rpn._post_nms_top_n = saved
            # rung 2: one trunk + FPN pass, RoI Align over the proposals, box head
            t = time.perf_counter()
            f2 = model.backbone(images.tensors)
            rh = model.roi_heads
            box_feats = rh.box_head(rh.box_roi_pool(f2, [props], images.image_sizes))
            rh.box_predictor(box_feats)
            _sync(device)
            t2 = time.perf_counter() - t
            # rung 1: warp each proposal to 224 x 224 and run the trunk on it alone (batches of 32)
            m = n if device.type == "cuda" else min(n, args.rcnn_regions)
            rois = torch.cat([torch.zeros_like(props[:m, :1]), props[:m]], 1)
            t = time.perf_counter()
            for s in range(0, m, 32):
                crops = roi_align(images.tensors, rois[s:s + 32].to(images.tensors.dtype), (224, 224),
                                  spatial_scale=1.0, sampling_ratio=2, aligned=True)
                classifier(F.adaptive_avg_pool2d(trunk(crops)["3"], 1).flatten(1).to(classifier.weight.dtype))
            _sync(device)
            t1 = (time.perf_counter() - t) * (n / max(1, m))
            regions_timed = m
            if k:
                times["rcnn"].append(t1)
                times["fast_rcnn"].append(t2)
                times["faster_mask_rcnn"].append(t3)
    mean = {k: sum(v) / len(v) for k, v in times.items()}
    return {"part": "speed_ladder", "device": str(device), "backbone": args.backbone, "size": f"{w}x{h}",
            "images": args.images, "proposals": args.proposals,
            "rcnn_regions_timed_per_image": regions_timed,
            "rcnn_s_per_image": round(mean["rcnn"], 3), "fast_rcnn_s_per_image": round(mean["fast_rcnn"], 4),
            "faster_mask_rcnn_s_per_image": round(mean["faster_mask_rcnn"], 4),
            "rcnn_over_fast": round(mean["rcnn"] / mean["fast_rcnn"], 1),
            "fast_over_faster_mask": round(mean["fast_rcnn"] / mean["faster_mask_rcnn"], 2),
            "seed_ladder_s": [49, 2.3, 0.2]}


def pooling_comparison(args, device, tmp: Path) -> list[dict]:
    n_train, n_test = (4, 3) if args.smoke else (25, 30)
    size = 64 if args.smoke else 128
    train_dir, test_dir = tmp / "pool_train", tmp / "pool_test"
    gt = generate(train_dir, n_images=n_train, seed=3, size=(size * 4 // 3, size))
    test_gt = generate(test_dir, n_images=n_test, seed=1003, size=(size * 4 // 3, size))
    out = []
    for pooling in ("roi_align", "roi_pool"):
        torch.manual_seed(args.seed)
        mcfg = ModelConfig(backbone="resnet18", min_size=size, max_size=size * 2,
                           anchor_sizes=(8, 16, 32, 64, 128), box_batch_size_per_image=128,
                           box_detections_per_img=args.detections)
        det = build_model(categories=CATEGORIES, weights="none", config=mcfg)
        if pooling == "roi_pool":
            use_roi_pool(det.model)
        with Project(train_dir, tmp / f"{pooling}.db") as project:
            project.scan()
            import_coco(project, gt)
            det.categories = tuple(project.categories())
            samples, groups = collect_samples(project, project.images())
        cfg = TrainConfig(weights="none", iterations=args.train_steps, batch_size=4, min_size=size,
                          max_size=size * 2, holdout=0.0, device=str(device), seed=args.seed)
        cfg = with_start_defaults(cfg, det)
        t = time.perf_counter()
        Trainer(det, samples, groups, cfg, tmp / f"{pooling}.pt").run()
        train_s = time.perf_counter() - t
        by_name = {c.name: c for c in det.categories}
        _, images, _, _ = plan_import(read_json(test_gt), str(test_gt), test_dir)
        items = [(ImageRecord(im.path, im.width, im.height), test_dir / im.path,
                  [i.with_(category_id=by_name[name].id) for name, i in im.instances]) for im in images.values()]
        m = evaluate_detector(det, items, str(device))
        out.append({"part": "pooling", "pooling": pooling, "device": str(device), "steps": args.train_steps,
                    "train_images": n_train, "unseen_images": n_test, "size": size, "train_s": round(train_s, 1),
                    "unseen_segm_AP": m["segm"]["AP"], "unseen_segm_AP75": m["segm"]["AP75"],
                    "unseen_bbox_AP": m["bbox"]["AP"], "seed": args.seed})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default=None)
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--size", type=int, default=480, help="shorter side of the ladder's images")
    ap.add_argument("--backbone", default="resnet50_v2")
    ap.add_argument("--proposals", type=int, default=2000)
    ap.add_argument("--rcnn-regions", type=int, default=64, help="regions timed per image on a CPU")
    ap.add_argument("--train-steps", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--detections", type=int, default=100, help="kept per image (COCO's 100)")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--no-pooling", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.images, args.size, args.proposals, args.rcnn_regions = 1, 96, 50, 8
        args.backbone, args.train_steps, args.detections = "resnet18", 2, 10
    device = pick_device(args.device)
    with tempfile.TemporaryDirectory() as tmp_:
        if not args.no_speed:
            print(json.dumps(speed_ladder(args, device, Path(tmp_))), flush=True)
        if not args.no_pooling:
            for line in pooling_comparison(args, device, Path(tmp_)):
                print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
