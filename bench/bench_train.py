"""Training throughput: Loupe's trainer vs the plain torchvision tutorial loop, in one run.

Named baseline: the loop of torchvision's "TorchVision Object Detection Finetuning Tutorial"
(a Dataset that opens each image with PIL and builds boxes/labels/masks tensors, a DataLoader
with a list collate, then ``loss = sum(model(images, targets).values()); zero_grad; backward;
step`` with SGD), in fp32. Ours: ``train_project`` (the code path of ``loupe train`` and the app's
Train button) with augmentation off, so both do the same work per image; on CUDA ours adds
autocast + GradScaler. Same architecture and starting weights, same images, same batch.
Step times are taken after warm-up steps, over whole epochs, so both loops see every image
equally often (their shuffles differ, and a step's cost depends on how many objects its images
hold); images/s is images / total time of the timed steps. Both loops use the
same tiny learning rate (``--lr``) so that they do the same work per step (see below).

    python bench/bench_train.py [--steps 16] [--warmup 4] [--rounds 2] [--batch-size 4]
                                [--size 128] [--backbone resnet18] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from torchvision.transforms.functional import pil_to_tensor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detector.coco import import_coco  # noqa: E402
from detector.inference import pick_device  # noqa: E402
from detector.model import ModelConfig, build_model, save_checkpoint  # noqa: E402
from detector.store import Project  # noqa: E402
from detector.synthetic import CATEGORIES, generate  # noqa: E402
from detector.training import Hook, TrainConfig, train_project  # noqa: E402


class TutorialDataset(torch.utils.data.Dataset):
    """The tutorial's dataset shape, reading the same COCO ground truth."""

    def __init__(self, folder: Path, gt: Path, keypoints: int):
        self.folder, self.coco, self.k = folder, COCO(str(gt)), keypoints
        self.ids = sorted(self.coco.getImgIds())
        self.label = {c: i + 1 for i, c in enumerate(sorted(self.coco.getCatIds()))}
        self.kp_offset, off = {}, 0
        for c in sorted(self.coco.getCatIds()):
            self.kp_offset[c] = off
            off += len(self.coco.loadCats(c)[0].get("keypoints", []))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        info = self.coco.loadImgs(self.ids[i])[0]
        img = pil_to_tensor(Image.open(self.folder / info["file_name"]).convert("RGB")).float() / 255
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=info["id"]))
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                               a["bbox"][1] + a["bbox"][3]] for a in anns], dtype=torch.float32)
        masks = torch.from_numpy(np.stack([self.coco.annToMask(a) for a in anns]))
        kps = torch.zeros((len(anns), self.k, 3))
        for j, a in enumerate(anns):
            if a.get("keypoints"):
                o = self.kp_offset[a["category_id"]]
                kps[j, o:o + len(a["keypoints"]) // 3] = torch.tensor(a["keypoints"], dtype=torch.float32).view(-1, 3)
        target = {"boxes": boxes, "labels": torch.tensor([self.label[a["category_id"]] for a in anns]),
                  "masks": masks, "keypoints": kps}
        return img, target


def tutorial_loop(model, loader, device, steps: int, lr: float) -> list[float]:
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)
    times, t = [], time.perf_counter()
    while len(times) < steps:
        for images, targets in loader:
            images = list(image.to(device) for image in images)
            targets = [{k: v.to(device) for k, v in t_.items()} for t_ in targets]
            loss_dict = model(images, targets)
            losses = sum(loss for loss in loss_dict.values())
            optimizer.zero_grad()
            losses.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            now = time.perf_counter()
            times.append(now - t)
            t = now
            if len(times) >= steps:
                break
    return times


class StepTimer(Hook):
    def __init__(self):
        self.times, self.t = [], 0.0

    def before_train(self, trainer) -> None:
        self.t = time.perf_counter()

    def after_step(self, trainer, event) -> None:
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.times.append(now - self.t)
        self.t = now


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=16, help="timed steps (whole epochs: images / batch)")
    ap.add_argument("--warmup", type=int, default=4, help="untimed steps first (one epoch)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--device", default=None)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-6)
    args = ap.parse_args()
    device = pick_device(args.device)
    w, h = args.size * 4 // 3, args.size
    small = dict(anchor_sizes=(8, 16, 32, 64, 128)) if args.size <= 256 else {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "imgs"
        gt = generate(folder, n_images=args.images, seed=4, size=(w, h))
        torch.manual_seed(0)
        mcfg = ModelConfig(backbone=args.backbone, min_size=args.size, max_size=w, **small)
        start = save_checkpoint(Path(tmp) / "start.pt", build_model(categories=CATEGORIES, weights="none",
                                                                   config=mcfg))
        total = args.warmup + args.steps
        # A tiny learning rate in both loops: the weights, and with them how many proposals and
        # positives each step carries, stay the same in both runs, so the ratio compares the
        # loops rather than two training trajectories (our warm-up + cosine schedule vs the
        # tutorial's constant rate would otherwise change the per-step work).
        lr = args.lr

        nk = sum(len(c.keypoints) for c in CATEGORIES)
        dataset = TutorialDataset(folder, gt, nk)
        with Project(folder) as project:
            project.scan()
            import_coco(project, gt)

        def run_baseline() -> list[float]:
            model = build_model(categories=CATEGORIES, weights=str(start), config=mcfg).model
            loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True,
                                                 collate_fn=lambda b: tuple(zip(*b)))
            return tutorial_loop(model, loader, device, total, lr)[args.warmup:]

        def run_ours() -> list[float]:
            timer = StepTimer()
            cfg = TrainConfig(weights=str(start), iterations=total, batch_size=args.batch_size, lr=lr, optimizer="sgd",
                              min_size=args.size, max_size=w, holdout=0.0, augment=False,
                              warmup_steps=1, device=args.device)
            with Project(folder) as project:
                train_project(project, cfg, Path(tmp) / "ours.pt", hooks=[timer])
            return timer.times[args.warmup:]

        # Rounds in alternating order (A B, B A, ...) so drift of the machine favours neither.
        base_times, our_times, per_round = [], [], []
        for r in range(args.rounds):
            order = (run_baseline, run_ours) if r % 2 == 0 else (run_ours, run_baseline)
            medians = {}
            for fn in order:
                times = fn()
                (base_times if fn is run_baseline else our_times).extend(times)
                medians["baseline" if fn is run_baseline else "ours"] = round(statistics.fmean(times), 3)
            per_round.append(medians)

    b, o = statistics.fmean(base_times), statistics.fmean(our_times)
    print(json.dumps({
        "device": str(device), "backbone": args.backbone, "size": f"{w}x{h}", "batch": args.batch_size,
        "timed_steps_each": len(our_times), "rounds": args.rounds,
        "baseline_tutorial_loop_img_per_s": round(args.batch_size / b, 3),
        "ours_img_per_s": round(args.batch_size / o, 3),
        "speedup_vs_tutorial_loop": round(b / o, 3),
        "mean_step_s_per_round": per_round,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }), flush=True)


if __name__ == "__main__":
    main()
