"""Fine-tuning on a project's reviewed images: a small loop with hooks, events and checkpoints.

Runs unchanged under ``torchrun --nproc_per_node=N`` (DistributedDataParallel, a distributed
sampler; only rank 0 writes checkpoints and logs).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torchvision import tv_tensors
from torchvision.transforms import v2

from . import masks as M
from . import profiles
from .errors import LoupeError
from .domain import Category, ImageRecord, ImageStatus, Instance
from .images import load_image
from .profiles import Profile
from .train_config import DEFAULT_BACKBONE, OPTIMIZERS, EventKind, TrainConfig, TrainEvent  # noqa: F401 (re-exported)
from .inference import is_out_of_memory, pick_device
from .model import (CheckpointError, Detector, ModelConfig, build_model, detector_from_checkpoint, focus_keypoints,
                    keypoint_slices, load_checkpoint, save_checkpoint)

LOSS_NAMES = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg",
              "loss_mask", "loss_keypoint")

# bench/RESULTS.md has the runs behind these (bench_e2e.py, 25 reviewed synthetic images).
FROM_SCRATCH_ADAMW_LR = 1e-3  # for batch 4, scaled by sqrt(batch / 4)
FROM_SCRATCH_SGD_LR_PER_IMAGE = 0.005
FINE_TUNE_SGD_LR_PER_IMAGE = 0.01 / 8  # torchvision's reference recipe: 0.02 for 16 images
FINE_TUNE_ADAMW_LR = 1e-4
MIN_BUDGET_STEPS = 40  # a time budget never cuts a run shorter than this
CALIBRATION_STEPS = 6  # steps timed (after the first) before a time budget sets the step count


def cpu_bf16_fast() -> bool:
    """Whether this CPU has bfloat16 matrix units (Intel AMX), where oneDNN runs bfloat16
    convolutions several times faster than float32; laptops without them keep float32.
    bench/RESULTS.md has the measurement behind it. ``LOUPE_CPU_BF16=0`` turns it off."""
    if os.environ.get("LOUPE_CPU_BF16", "1") == "0":
        return False
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool(probe and probe())
    except (RuntimeError, AttributeError):
        return False


class TrainingError(LoupeError):
    """Training stopped; the message says why and what to do. The previous model is kept."""


@dataclass
class TrainResult:
    ok: bool
    checkpoint: str | None
    steps: int
    images_seen: int
    cancelled: bool = False
    message: str = ""
    losses: dict[str, float] = field(default_factory=dict)
    train_images: int = 0
    holdout_images: int = 0
    optimizer: str = ""
    lr: float = 0.0

    def summary(self) -> dict:
        return asdict(self)


class Hook:
    """Override what you need; ``after_train`` always runs (in ``finally``)."""

    def before_train(self, trainer: Trainer) -> None: ...
    def after_loss(self, trainer: Trainer, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return losses
    def after_step(self, trainer: Trainer, event: TrainEvent) -> None: ...
    def after_train(self, trainer: Trainer) -> None: ...


# ------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------
def is_holdout(path: str, fraction: float) -> bool:
    """Stable split: the same image is held out every time, whatever else is in the project."""
    if fraction <= 0:
        return False
    h = int(hashlib.sha1(path.encode("utf-8")).hexdigest()[:8], 16)
    return (h % 10_000) < fraction * 10_000


def split_reviewed(project, holdout: float) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """(train, held out) among the reviewed images; at least one image stays for training."""
    reviewed = project.images(ImageStatus.REVIEWED)
    train = [r for r in reviewed if not is_holdout(r.path, holdout)]
    held = [r for r in reviewed if is_holdout(r.path, holdout)]
    if not train and held:
        train, held = held[:1], held[1:]
    return train, held


@dataclass
class Sample:
    path: Path
    instances: list[Instance]
    width: int = 0
    height: int = 0


class LabelledImages(torch.utils.data.Dataset):
    """Images and their instances as torchvision detection targets, augmented with transforms v2."""

    def __init__(self, samples: list[Sample], categories: tuple[Category, ...], augment: bool, seed: int):
        self.samples = samples
        self.label_of = {c.id: i + 1 for i, c in enumerate(categories)}
        self.categories = categories
        self.slices = keypoint_slices(categories)
        self.num_keypoints = sum(len(c.keypoints) for c in categories)
        flip = list(range(self.num_keypoints))
        for lab, sl in self.slices.items():
            perm = categories[lab - 1].flip_permutation()
            for j, p in enumerate(perm):
                flip[sl.start + j] = sl.start + p
        self.flip_perm = torch.tensor(flip, dtype=torch.long)
        self.augment = augment
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.samples)

    def _colour(self, image: torch.Tensor) -> torch.Tensor:
        """Colour jitter (brightness, contrast, saturation 0.7-1.3, hue +-0.03, random order)
        drawn from the dataset's own generator, so a seed gives the same run even while a
        prefetch thread and the model draw random numbers side by side."""
        F = v2.functional
        ops = [(F.adjust_brightness, self.rng.uniform(0.7, 1.3)),
               (F.adjust_contrast, self.rng.uniform(0.7, 1.3)),
               (F.adjust_saturation, self.rng.uniform(0.7, 1.3)),
               (F.adjust_hue, self.rng.uniform(-0.03, 0.03))]
        self.rng.shuffle(ops)
        for fn, factor in ops:
            image = fn(image, factor)
        return image

    def __getitem__(self, i: int):
        s = self.samples[i]
        rgb = load_image(s.path)
        h, w = rgb.shape[:2]
        insts = [x for x in s.instances if not x.crowd and x.category_id in self.label_of]
        masks = np.zeros((len(insts), h, w), dtype=np.uint8)
        kps = torch.zeros((len(insts), self.num_keypoints, 3), dtype=torch.float32)
        for j, inst in enumerate(insts):
            masks[j] = M.decode(inst.mask) if inst.mask is not None else M.decode(M.from_box(inst.box, h, w))
            sl = self.slices.get(self.label_of[inst.category_id])
            if sl is not None and inst.keypoints:
                kps[j, sl] = torch.tensor(inst.keypoints, dtype=torch.float32)[: sl.stop - sl.start]
        image = tv_tensors.Image(torch.from_numpy(rgb).permute(2, 0, 1))
        boxes = tv_tensors.BoundingBoxes(torch.tensor([x.box for x in insts], dtype=torch.float32).reshape(-1, 4),
                                         format="XYXY", canvas_size=(h, w))
        mask_t = tv_tensors.Mask(torch.from_numpy(masks))
        n, k = len(insts), self.num_keypoints
        vis = kps[..., 2]
        points = tv_tensors.KeyPoints(kps[..., :2].reshape(-1, 2), canvas_size=(h, w))
        if self.augment:
            if self.rng.random() < 0.5:
                # Boxes, masks and keypoints move together; left/right keypoints swap names.
                flip = v2.functional.horizontal_flip
                image, boxes, mask_t, points = flip(image), flip(boxes), flip(mask_t), flip(points)
                xy = points.as_subclass(torch.Tensor).reshape(n, k, 2)[:, self.flip_perm]
                vis = vis[:, self.flip_perm]
            else:
                xy = points.as_subclass(torch.Tensor).reshape(n, k, 2)
            image = self._colour(image)
        else:
            xy = points.as_subclass(torch.Tensor).reshape(n, k, 2)
        kps = torch.cat([xy, vis[..., None]], dim=-1)
        labels = torch.tensor([self.label_of[x.category_id] for x in insts], dtype=torch.int64)
        b = boxes.as_subclass(torch.Tensor)
        keep = (b[:, 2] - b[:, 0] >= 1) & (b[:, 3] - b[:, 1] >= 1)  # torchvision rejects empty boxes
        target = {"boxes": b[keep], "labels": labels[keep],
                  "masks": mask_t.as_subclass(torch.Tensor)[keep]}
        if self.num_keypoints:
            target["keypoints"] = kps[keep]
        return image.as_subclass(torch.Tensor).float().div_(255), target


class AspectRatioBatches(torch.utils.data.Sampler):
    """Batches of images with the same orientation (landscape vs portrait), shuffled per epoch."""

    def __init__(self, groups: list[int], batch_size: int, seed: int, rank: int = 0, world: int = 1):
        self.groups, self.batch_size, self.seed = groups, batch_size, seed
        self.rank, self.world, self.epoch = rank, world, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        rng = random.Random(self.seed + self.epoch)
        idx = list(range(len(self.groups)))
        rng.shuffle(idx)
        batches, open_ = [], {}
        for i in idx:
            g = open_.setdefault(self.groups[i], [])
            g.append(i)
            if len(g) == self.batch_size:
                batches.append(g)
                open_[self.groups[i]] = []
        batches += [g for g in open_.values() if g]
        rng.shuffle(batches)
        # Every rank gets the same number of batches (padding with repeats) so DDP stays in step.
        per = math.ceil(len(batches) / self.world)
        batches = (batches * (1 + per * self.world // max(1, len(batches))))[: per * self.world]
        return batches[self.rank::self.world]

    def __iter__(self):
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())


def _collate(batch):
    return tuple(zip(*batch))


class _End:
    def __init__(self, error: BaseException | None = None):
        self.error = error


def _pinned(batch):
    """Page-locked copies (on the prefetch thread), so uploads overlap the GPU's work."""
    images, targets = batch
    return (tuple(i.pin_memory() for i in images),
            tuple({k: v.pin_memory() for k, v in t.items()} for t in targets))


def _prefetched(iterable, depth: int = 2, prepare=None):
    """Yield ``iterable``'s items while a thread prepares the next ones.

    Decoding images and masks (Pillow and pycocotools release the GIL for the heavy part)
    overlaps the model's step instead of adding to it. A thread, not DataLoader worker
    processes: it is safe to start from any process (a GUI, pytest) and costs no copies.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def fill() -> None:
        try:
            for item in iterable:
                if not put(prepare(item) if prepare is not None else item):
                    return
            put(_End())
        except BaseException as exc:  # re-raised on the training thread
            put(_End(exc))

    thread = threading.Thread(target=fill, name="loupe-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return
            yield item
    finally:
        stop.set()
        thread.join(timeout=10)


# ------------------------------------------------------------------------------------------
# The trainer
# ------------------------------------------------------------------------------------------
def _dist_info() -> tuple[int, int, int]:
    """(rank, world size, local rank); under torchrun even with one process, so that a single-GPU
    torchrun run takes the same DistributedDataParallel path (and NCCL) as a multi-GPU one."""
    if "WORLD_SIZE" in os.environ and "TORCHELASTIC_RUN_ID" in os.environ or \
            int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return int(os.environ.get("RANK", 0)), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    return 0, 1, 0


class Trainer:
    """Trains ``detector`` on ``samples``; emits TrainEvents; cancellable and resumable."""

    def __init__(self, detector: Detector, samples: list[Sample], groups: list[int], cfg: TrainConfig,
                 output: str | os.PathLike, *, on_event: Callable[[TrainEvent], None] | None = None,
                 hooks: list[Hook] | None = None, cancel: threading.Event | None = None,
                 extra_meta: dict | None = None):
        self.detector, self.samples, self.cfg = detector, samples, cfg
        self.output = Path(output)
        self.on_event = on_event or (lambda e: None)
        self.hooks = hooks or []
        self.cancel = cancel or threading.Event()
        self.extra_meta = extra_meta or {}
        self.rank, self.world, local_rank = _dist_info()
        self.distributed = "TORCHELASTIC_RUN_ID" in os.environ or self.world > 1
        if self.distributed and not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo"
            dist.init_process_group(backend)
        self.device = pick_device(cfg.device)
        if self.device.type == "cuda" and self.distributed:
            self.device = torch.device("cuda", local_rank)
            torch.cuda.set_device(self.device)
        steps_per_epoch = max(1, math.ceil(len(samples) / cfg.batch_size / self.world))
        if cfg.iterations:
            self.total_steps = cfg.iterations
        elif cfg.epochs:
            self.total_steps = cfg.epochs * steps_per_epoch
        else:
            self.total_steps = max(100, 20 * steps_per_epoch)
        self.steps_per_epoch = steps_per_epoch
        self._budget_fitted = not cfg.time_budget_s
        self._refit_step: int | None = None  # a time budget's second look at the step time
        self.step = 0
        self.images_seen = 0
        self.local_images = 0  # this rank's own count, to show every rank took part
        self.images_per_rank: list[int] = []
        self.last_losses: dict[str, float] = {}
        torch.manual_seed(cfg.seed)
        self.dataset = LabelledImages(samples, detector.categories, cfg.augment, cfg.seed + self.rank)
        self.sampler = AspectRatioBatches(groups, cfg.batch_size, cfg.seed, self.rank, self.world)
        focus_keypoints(detector.model, detector.categories)
        try:
            self.model = detector.model.to(self.device)
        except RuntimeError as exc:
            if is_out_of_memory(exc):
                raise TrainingError(f"out of memory on {self.device} while loading the model: close "
                                    "other programs using the GPU, or train on the CPU") from exc
            raise
        if cfg.min_size:
            s = cfg.min_size
            # Scale jitter the torchvision way: a random shorter side per batch while training.
            self.model.transform.min_size = tuple(int(s * f) for f in (0.8, 0.9, 1.0, 1.1, 1.2)) \
                if cfg.augment else (s,)
            self.model.transform.max_size = cfg.max_size
        self.ddp = None
        if self.distributed:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if cfg.optimizer == "adamw":
            # fused: one multi-threaded kernel per step instead of ~10 ops a parameter
            # (on a CPU the unfused update took 14 % of a cpu-fast step; bench/RESULTS.md)
            self.optimizer = torch.optim.AdamW(params, lr=cfg.lr or FINE_TUNE_ADAMW_LR,
                                               weight_decay=cfg.weight_decay,
                                               fused=self.device.type in ("cpu", "cuda"))
        else:
            self.optimizer = torch.optim.SGD(params, lr=cfg.lr or FINE_TUNE_SGD_LR_PER_IMAGE * cfg.batch_size,
                                             momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        warm = max(1, min(cfg.warmup_steps, self.total_steps // 5))

        def schedule(step: int) -> float:  # linear warm-up, then cosine to 5% at total_steps
            if step < warm:
                return 0.001 + (1 - 0.001) * step / warm
            span = max(1, self.total_steps - warm)
            return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / span)))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        cuda = self.device.type == "cuda"
        # A GPU: bfloat16 where it has it (Ampere and later): float32's range, so no loss scaling
        # and no overflow from random initial weights; float16 with a GradScaler elsewhere.
        # A CPU with bfloat16 matrix units (AMX): bfloat16 autocast (see cpu_bf16_fast), in one
        # process only: a two-process gloo run on the CPU had a rank abort (SIGABRT) in 2 of ~4
        # full test runs once bfloat16 was on, cause not found; CPU DDP is for tests and small
        # jobs, GPUs have their own autocast.
        self.amp = cfg.amp and (cuda or (self.device.type == "cpu" and self.world == 1 and cpu_bf16_fast()))
        self.amp_dtype = torch.float16 if cuda and not torch.cuda.is_bf16_supported() else torch.bfloat16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.amp_dtype == torch.float16)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def emit(self, event: TrainEvent) -> None:
        if self.is_main:
            self.on_event(event)

    # -- checkpoints ------------------------------------------------------------------------
    def save(self, path: Path, *, complete: bool) -> None:
        if not self.is_main:
            return
        save_checkpoint(path, self.detector, optimizer=self.optimizer.state_dict(),
                        scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict(),
                        step=self.step, total_steps=self.total_steps, complete=complete,
                        images_seen=self.images_seen, world_size=self.world,
                        images_per_rank=self.images_per_rank,
                        train_config=_jsonable(asdict(self.cfg)),
                        training={"losses": self.last_losses, "steps": self.step,
                                  "images": len(self.samples)}, **self.extra_meta)

    def resume_from(self, ckpt: dict) -> None:
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if "scaler" in ckpt and ckpt["scaler"]:
            self.scaler.load_state_dict(ckpt["scaler"])
        self.step = int(ckpt.get("step", 0))
        self.images_seen = int(ckpt.get("images_seen", 0))
        # A run whose length a time budget fixed ends where it was going to.
        if (ckpt.get("train_config") or {}).get("time_budget_s"):
            self.total_steps = int(ckpt.get("total_steps", self.total_steps))
        self._budget_fitted = True

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> TrainResult:
        model = self.ddp or self.model
        model.train()
        if self.cfg.freeze_bn:  # statistics learned before stay; batches of 2-4 would make them noisy
            for m in self.model.backbone.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.eval()
        loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=self.sampler,
                                             collate_fn=_collate, num_workers=0)
        for h in self.hooks:
            h.before_train(self)
        backend = f" ({dist.get_backend()})" if dist.is_initialized() else ""
        profile = self.extra_meta.get("profile")
        precision = str(self.amp_dtype).split(".")[-1]
        self.emit(TrainEvent("start", self.step, self.total_steps,
                             message=f"training on {len(self.samples)} images, {self.world} process(es)"
                                     f"{backend}, device {self.device}"
                                     + (f" ({precision} autocast)" if self.amp else "")
                                     + (f"; profile {profile}: {self.extra_meta.get('profile_reason')}"
                                        + (f", {precision} autocast" if self.amp else "") if profile else "")))
        t_last, n_last = time.perf_counter(), 0
        self._t_start = t_last
        result: TrainResult | None = None
        batches = None
        try:
            epoch = self.step // self.steps_per_epoch
            while self.step < self.total_steps:
                self.sampler.set_epoch(epoch)
                batches = _prefetched(loader, prepare=_pinned if self.device.type == "cuda" else None)
                for images, targets in batches:
                    if self.step >= self.total_steps:
                        break
                    if self._cancelled():
                        self.save(self.output, complete=False)
                        self.emit(TrainEvent("cancelled", self.step, self.total_steps, epoch,
                                             message="cancelled; progress saved, resumable"))
                        result = TrainResult(False, str(self.output), self.step, self.images_seen,
                                             cancelled=True, message="cancelled",
                                             losses=self.last_losses)
                        return result
                    self._one_step(model, images, targets)
                    self._fit_budget()
                    self.local_images += len(images)
                    self.images_seen += len(images) * self.world
                    n_last += len(images) * self.world
                    now = time.perf_counter()
                    ips = n_last / max(1e-6, now - t_last)
                    t_last, n_last = now, 0
                    ev = TrainEvent("step", self.step, self.total_steps, epoch,
                                    self.optimizer.param_groups[0]["lr"], dict(self.last_losses),
                                    round(ips, 3))
                    self.emit(ev)
                    for h in self.hooks:
                        h.after_step(self, ev)
                    if self.cfg.checkpoint_every and self.step % self.cfg.checkpoint_every == 0 \
                            and self.step < self.total_steps:
                        self.save(self.output, complete=False)
                        self.emit(TrainEvent("checkpoint", self.step, self.total_steps, epoch,
                                             message=str(self.output)))
                epoch += 1
            self.images_per_rank = self._gather_counts()
            self.save(self.output, complete=True)
            self.emit(TrainEvent("done", self.step, self.total_steps, epoch, losses=self.last_losses,
                                 message=str(self.output)))
            result = TrainResult(True, str(self.output), self.step, self.images_seen,
                                 losses=self.last_losses)
            return result
        finally:
            if batches is not None:
                batches.close()  # stops the prefetch thread, whichever way the loop ended
            self.model.transform.min_size = (self.cfg.min_size,)
            self.model.eval()
            for h in self.hooks:
                h.after_train(self)

    def _fit_budget(self) -> None:
        """With a time budget: once a few steps are timed, set the step count that fits it; look
        again about 40 % of the way in, when the step time has settled (the first steps pay for
        kernel set-up per input shape: with bfloat16 on a CPU the first fit alone left ~10 % of
        the budget unused). The learning-rate schedule follows the step count."""
        budget = self.cfg.time_budget_s
        if not budget or (self._budget_fitted and self.step != self._refit_step):
            return
        now = time.perf_counter()
        if self.step == 1:
            self._t_budget0, self._t_first = now, now - self._t_start  # the first step pays for warm-up
            return
        if self.step < 1 + CALIBRATION_STEPS:
            return
        if not self._budget_fitted:
            per_step = (now - self._t_budget0) / (self.step - 1)
            self._step_cap = self.total_steps
        else:
            per_step = (now - self._t_refit0) / (self.step - self._s_refit0)
        left = budget - (now - self._t_start)
        fit = self.step + int(max(0.0, left) / max(per_step, 1e-6))
        if self.world > 1:  # every rank must stop at the same step
            t = torch.tensor([fit], device=self.device if self.device.type == "cuda" else "cpu")
            dist.all_reduce(t, op=dist.ReduceOp.MIN)
            fit = int(t.item())
        cap = self._step_cap
        self.total_steps = max(min(cap, fit), min(cap, MIN_BUDGET_STEPS), self.step)
        first = not self._budget_fitted
        self._budget_fitted = True
        self._refit_step = None
        if first:
            again = self.step + max(CALIBRATION_STEPS, (self.total_steps - self.step) * 2 // 5)
            if again < self.total_steps:
                self._refit_step, self._t_refit0, self._s_refit0 = again, now, self.step

    def _gather_counts(self) -> list[int]:
        if self.world == 1:
            return [self.local_images]
        dev = self.device if self.device.type == "cuda" else torch.device("cpu")
        out = [torch.zeros(1, dtype=torch.long, device=dev) for _ in range(self.world)]
        dist.all_gather(out, torch.tensor([self.local_images], device=dev))
        return [int(t.item()) for t in out]

    def _cancelled(self) -> bool:
        flag = self.cancel.is_set()
        if self.world > 1:  # every rank stops at the same step
            t = torch.tensor([int(flag)], device=self.device if self.device.type == "cuda" else "cpu")
            dist.all_reduce(t)
            flag = bool(t.item())
        return flag

    def _one_step(self, model, images, targets) -> None:
        images = [i.to(self.device, non_blocking=True) for i in images]
        targets = [{k: v.to(self.device, non_blocking=True) for k, v in t.items()} for t in targets]
        try:
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
                losses = model(images, targets)
            for h in self.hooks:
                losses = h.after_loss(self, losses)
            total = sum(losses.values())
            if not torch.isfinite(total):
                bad = [k for k, v in losses.items() if not torch.isfinite(v)]
                raise TrainingError(
                    f"the loss became {float(total.detach())} at step {self.step + 1} ({', '.join(bad)}): "
                    "training stopped and the previous model is kept. Lower the learning rate "
                    f"(now {self.optimizer.param_groups[0]['lr']:.2g}) or check the labels.")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(total).backward()
            if self.cfg.clip_grad:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
        except RuntimeError as exc:
            if is_out_of_memory(exc):
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                raise TrainingError(
                    f"out of memory on {self.device} at step {self.step + 1}: lower the batch size "
                    f"(now {self.cfg.batch_size}) or the image size (now {self.cfg.min_size})") from exc
            raise
        self.step += 1
        # One device-to-host copy for all the numbers, not one sync per loss term.
        values = torch.stack([v.detach().float() for v in losses.values()] + [total.detach().float()]).tolist()
        self.last_losses = {k: round(v, 5) for k, v in zip([*losses, "loss"], values)}


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=str))


# ------------------------------------------------------------------------------------------
# From a project
# ------------------------------------------------------------------------------------------
def _person_instances(project, rec: ImageRecord) -> list[Instance]:
    return [i for i in project.instances(rec.id) if i.touched_by_person]


def collect_samples(project, records: list[ImageRecord]) -> tuple[list[Sample], list[int]]:
    samples, groups = [], []
    for r in records:
        r = project.ensure_size(r)
        if not r.readable:
            continue
        samples.append(Sample(project.abspath(r), _person_instances(project, r), r.width, r.height))
        groups.append(int(r.width >= r.height))
    return samples, groups


def prepare_detector(project, cfg: TrainConfig) -> tuple[Detector, dict | None]:
    """The model to start from, and the checkpoint to resume (if any)."""
    cats = project.categories()
    if not cats:
        raise TrainingError("the project has no categories: label something first")
    overrides = dict(cfg.model_overrides)
    resume_ckpt = None
    if cfg.resume:
        try:
            resume_ckpt = load_checkpoint(cfg.resume)
            det = detector_from_checkpoint(resume_ckpt, tuple(cats), source=cfg.resume,
                                           strict_categories=True)
        except CheckpointError as exc:
            raise TrainingError(str(exc)) from exc
        return det, resume_ckpt
    if cfg.weights not in (None, "none", "coco"):
        try:
            ckpt = load_checkpoint(cfg.weights)
        except CheckpointError as exc:
            raise TrainingError(str(exc)) from exc
        saved = ModelConfig.from_dict(ckpt["config"])
        mcfg = replace(saved, min_size=cfg.min_size, max_size=cfg.max_size, **overrides)
        if cfg.trainable_layers is not None and cfg.trainable_layers != saved.trainable_layers:
            mcfg = replace(mcfg, trainable_layers=cfg.trainable_layers)
        try:
            det = detector_from_checkpoint(ckpt, tuple(cats), source=str(cfg.weights), config=mcfg)
        except CheckpointError as exc:
            raise TrainingError(str(exc)) from exc
        return det, None
    backbone = cfg.backbone or DEFAULT_BACKBONE
    pretrained = cfg.weights == "coco" and backbone == DEFAULT_BACKBONE
    layers = cfg.trainable_layers if cfg.trainable_layers is not None else (3 if pretrained else 5)
    mcfg = ModelConfig(backbone=backbone, min_size=cfg.min_size, max_size=cfg.max_size,
                       trainable_layers=layers, **overrides)
    det = build_model(categories=cats, weights=cfg.weights, config=mcfg)
    return det, None


def apply_profile(cfg: TrainConfig, sizes: list[tuple[int, int]],
                  samples: list[Sample] = ()) -> tuple[TrainConfig, Profile]:
    """Fill the settings left open from the profile (device, image sizes); what was set stays.

    Also raises the detections kept per image for dense data: at least 1.5x the most instances
    in one reviewed image (COCO's 100 would cap recall on crowded images such as nuclei).
    """
    from .model import coco_cache_path

    try:
        objects = [min(i.box[2] - i.box[0], i.box[3] - i.box[1]) for s in samples for i in s.instances]
        prof = profiles.choose(cfg.profile, pick_device(cfg.device), sizes, objects)
    except ValueError as exc:
        raise TrainingError(str(exc)) from exc
    backbone = cfg.backbone
    if backbone is None and not (cfg.weights == "coco" and coco_cache_path().is_file()):
        backbone = prof.backbone  # COCO weights at hand keep their ResNet-50 FPN v2
    min_size = cfg.min_size or prof.min_size
    prof_overrides = dict(prof.model_overrides)
    if backbone != "resnet18" or cfg.weights not in (None, "none", "coco"):
        # The pyramid's width shapes the weights: only a new ResNet-18 model takes the profile's.
        prof_overrides.pop("fpn_channels", None)
    overrides = {**prof_overrides, **cfg.model_overrides}
    most = max((len(s.instances) for s in samples), default=0)
    if "box_detections_per_img" not in overrides and most * 1.5 > 100:
        overrides["box_detections_per_img"] = int(math.ceil(most * 1.5))
    explicit = bool(cfg.iterations or cfg.epochs)
    iterations = cfg.iterations if explicit else prof.iterations
    budget = cfg.time_budget_s if (cfg.time_budget_s or explicit) else prof.time_budget_s
    out = replace(cfg, backbone=backbone, min_size=min_size, iterations=iterations, time_budget_s=budget,
                  max_size=cfg.max_size or max(min_size, int(min_size * 5 / 3)),
                  batch_size=cfg.batch_size or prof.batch_size, model_overrides=overrides)
    rois = overrides.get("box_batch_size_per_image", 512)
    net = backbone or "the checkpoint's or ResNet-50 FPN v2"
    prof = replace(prof, reason=f"{prof.reason} -> {net} backbone, {min_size} px, batch {out.batch_size}, "
                                f"{rois} sampled regions")
    return out, prof


def starts_from_random(cfg: TrainConfig, det: Detector) -> tuple[bool, bool]:
    """(the weights are random now, the weights go back to a random start).

    The second is true for a checkpoint trained here from random weights, however many rounds
    ago (checkpoints carry ``from_random_init``); COCO weights and older checkpoints say no.
    """
    random_now = bool(det.meta.get("from_scratch")) and cfg.weights in (None, "none", "coco")
    return random_now, random_now or bool(det.meta.get("from_random_init"))


def with_start_defaults(cfg: TrainConfig, det: Detector, resume_ckpt: dict | None = None) -> TrainConfig:
    """Fill in the optimizer and learning rate left open, from where the weights start.

    Weights that are, or go back to, a random start: AdamW at 1e-3 (batch 4). Over 200 steps on
    25 reviewed synthetic images it reached unseen segm AP 0.44 against 0.16 for the best SGD
    rate; continuing such a model on more images, AdamW also beat SGD (0.56 vs 0.44;
    bench/RESULTS.md). COCO weights: torchvision's reference SGD recipe, 0.01 for batch 8.
    Resuming keeps the optimizer the run was started with (its state is in the checkpoint).
    """
    if cfg.optimizer is not None and cfg.optimizer not in OPTIMIZERS:
        raise TrainingError(f"unknown optimizer {cfg.optimizer!r} (known: {', '.join(OPTIMIZERS)})")
    if resume_ckpt is not None:
        run = resume_ckpt.get("train_config") or {}
        saved = run.get("optimizer") or "sgd"
        if cfg.optimizer not in (None, saved):
            raise TrainingError(f"{cfg.resume}: that run used {saved}; resume it with the same "
                                f"optimizer (or leave the optimizer unset)")
        return replace(cfg, optimizer=saved, lr=cfg.lr if cfg.lr is not None else run.get("lr"))
    random_now, random_start = starts_from_random(cfg, det)
    batch = cfg.batch_size or 2
    optimizer = cfg.optimizer or ("adamw" if random_start else "sgd")
    lr = cfg.lr
    if lr is None:
        if optimizer == "adamw":
            lr = FROM_SCRATCH_ADAMW_LR * math.sqrt(batch / 4) if random_start else FINE_TUNE_ADAMW_LR
        else:
            lr = (FROM_SCRATCH_SGD_LR_PER_IMAGE if random_now else FINE_TUNE_SGD_LR_PER_IMAGE) * batch
    return replace(cfg, optimizer=optimizer, lr=lr)


def train_project(project, cfg: TrainConfig, output: str | os.PathLike, *, progress: bool = False,
                  json_events: bool = False, on_event: Callable[[TrainEvent], None] | None = None,
                  hooks: list[Hook] | None = None, cancel: threading.Event | None = None) -> TrainResult:
    """Fine-tune on the project's reviewed images (minus the held-out split) and write ``output``."""
    train, held = split_reviewed(project, cfg.holdout)
    samples, groups = collect_samples(project, train)
    if cfg.extra_coco:
        samples_x, groups_x = _coco_samples(project, cfg.extra_coco)
        samples += samples_x
        groups += groups_x
    if not samples:
        raise TrainingError("no reviewed images to train on: review (Space) a few images first")
    if not any(s.instances for s in samples):
        raise TrainingError("the reviewed images have no instances: label some objects first")
    cfg, profile = apply_profile(cfg, [(s.width, s.height) for s in samples], samples)
    torch.manual_seed(cfg.seed)  # the seed covers random initial weights too, not only the run
    det, resume_ckpt = prepare_detector(project, cfg)
    cfg = with_start_defaults(cfg, det, resume_ckpt)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=1, unit="step", desc="training", disable=_dist_info()[0] != 0)

    def report(ev: TrainEvent) -> None:
        if json_events:
            print(ev.to_json(), flush=True)
        if bar is not None:
            if ev.kind == "start":
                bar.reset(total=ev.total_steps)
                bar.update(ev.step)
                bar.write(det.notice)
                bar.write(f"profile {profile.name}: {profile.reason}")
            elif ev.kind == "step":
                bar.update(1)
                bar.set_postfix(loss=ev.losses.get("loss"), ips=ev.images_per_s)
        if on_event is not None:
            on_event(ev)

    trainer = Trainer(det, samples, groups, cfg, output, on_event=report, hooks=hooks, cancel=cancel,
                      extra_meta={"holdout": {"fraction": cfg.holdout,
                                              "images": [r.path for r in held]},
                                  "notice": det.notice, "profile": profile.name,
                                  "profile_reason": profile.reason,
                                  "from_random_init": starts_from_random(cfg, det)[1]})
    if resume_ckpt is not None:
        trainer.resume_from(resume_ckpt)
    try:
        result = trainer.run()
    except TrainingError as exc:
        report(TrainEvent("error", trainer.step, trainer.total_steps, message=str(exc)))
        raise
    finally:
        if bar is not None:
            bar.close()
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    result.train_images, result.holdout_images = len(samples), len(held)
    result.optimizer, result.lr = cfg.optimizer, cfg.lr
    return result


def _coco_samples(project, coco_path: str) -> tuple[list[Sample], list[int]]:
    """Samples from a COCO file's images under the project's folder (validated, not imported)."""
    from .coco import plan_import, read_json

    cats, images, _, _ = plan_import(read_json(coco_path), coco_path, project.root)
    ids = {c.name: c.id for c in project.categories()}
    missing = sorted({n for im in images.values() for n, _ in im.instances if n not in ids})
    if missing:
        raise TrainingError(f"{coco_path}: categories not in the project: {', '.join(missing)}")
    samples, groups = [], []
    for im in images.values():
        samples.append(Sample(project.root / im.path,
                              [i.with_(category_id=ids[n]) for n, i in im.instances], im.width, im.height))
        groups.append(int(im.width >= im.height))
    return samples, groups

