"""Pre-annotation speed: `loupe predict` (predict_project) vs the plain torchvision loop.

Baseline, per image: PIL load, to tensor, model([image]), masks > 0.5 to numpy (torchvision pastes
every mask into a full-size N x H x W float tensor). Ours: batched, decoding ahead on threads,
masks pasted inside their boxes and RLE-encoded on a CPU thread while the next batch runs, and the
predictions stored in the project. Same model weights, same images, one run; prints the ratio.

    python bench/bench_predict.py [--images 24] [--size 640x480] [--backbone resnet18] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms.functional import to_tensor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detector.inference import pick_device, predict_project  # noqa: E402
from detector.model import ModelConfig, build_model, save_checkpoint  # noqa: E402
from detector.store import Project  # noqa: E402
from detector.synthetic import CATEGORIES, generate  # noqa: E402


def baseline(model, paths, device) -> float:
    model.to(device).eval()
    t = time.perf_counter()
    with torch.inference_mode():
        for p in paths:
            img = to_tensor(Image.open(p).convert("RGB")).to(device)
            out = model([img])[0]
            _ = (out["masks"] > 0.5).squeeze(1).cpu().numpy()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--min-size", type=int, default=480)
    ap.add_argument("--device", default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--detections", type=int, default=100)
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    device = pick_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "imgs"
        generate(folder, n_images=args.images, seed=11, size=(w, h))
        torch.manual_seed(0)
        cfg = ModelConfig(backbone=args.backbone, min_size=args.min_size, max_size=max(w, h),
                          box_detections_per_img=args.detections)
        det = build_model(categories=CATEGORIES, weights="none", config=cfg)
        ckpt = save_checkpoint(Path(tmp) / "m.pt", det)
        paths = sorted(folder.glob("*.png"))
        # Warm-up both paths once (allocator, cuDNN autotune) on two images.
        baseline(det.model, paths[:2], device)
        t_base = baseline(det.model, paths, device)
        with Project(folder) as project:
            project.scan()
            t = time.perf_counter()
            summary = predict_project(project, weights=str(ckpt), device=args.device,
                                      batch_size=args.batch_size)
            t_ours = time.perf_counter() - t
    n = args.images
    result = {
        "device": summary["device"], "backbone": args.backbone, "images": n, "size": args.size,
        "batch_size": args.batch_size or "auto", "detections_per_image": round(summary["instances"] / max(1, n), 1),
        "baseline_s_per_image": round(t_base / n, 4), "ours_s_per_image": round(t_ours / n, 4),
        "speedup_vs_plain_torchvision_loop": round(t_base / t_ours, 2),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
