"""Fine-tuning on a project's reviewed images: a small loop with hooks, events and checkpoints.

Runs unchanged under ``torchrun --nproc_per_node=N`` (DistributedDataParallel, a distributed
sampler; only rank 0 writes checkpoints and logs).
"""

from __future__ import annotations

import json
from pathlib import Path
import math
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import replace

import torch
import torch.distributed as dist

from torchvision.models.detection.image_list import ImageList

from .errors import TrainingError
from .devices import cpu_autocast, dist_info, is_out_of_memory, pick_device  # noqa: F401
from .model import Detector, prepare_roi_heads, save_checkpoint
from .step_random import draw_per_step, drawing_from
from .train_config import BUDGET_EPOCHS, EventKind, Hook, TrainConfig, TrainEvent, TrainResult  # noqa: F401 (re-exported)
from .train_data import (AspectRatioBatches, LabelledImages, RunBatches, Sample, _coco_samples,  # noqa: F401
                         _collate, _pinned, _prefetched, collect_samples, data_loader, data_workers, is_holdout,
                         split_reviewed)
from .train_hooks import PeriodicCheckpointer, WeightAverage
from .train_setup import (FINE_TUNE_ADAMW_LR, FINE_TUNE_SGD_LR_PER_IMAGE, apply_profile,  # noqa: F401
                          prepare_detector, starts_from_random, trunk_clause, with_start_defaults)

LOSS_NAMES = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg",
              "loss_mask", "loss_keypoint")

MIN_BUDGET_STEPS = 40  # a time budget never cuts a run shorter than this
CALIBRATION_STEPS = 6  # steps timed (after the first) before a time budget sets the step count
# A run whose step count a time budget fitted ends at the step that passes this share of the budget
# (or of its longer limit), should the machine slow down after the last look (a shared VM did: a
# 270 s run took 406 s)
DEADLINE_SLACK = 1.05


# ------------------------------------------------------------------------------------------
# The trainer
# ------------------------------------------------------------------------------------------
class Trainer:
    """Trains ``detector`` on ``samples``; emits TrainEvents; cancellable and resumable."""

    def __init__(self, detector: Detector, samples: list[Sample], groups: list[int], cfg: TrainConfig,
                 output: str | os.PathLike, *, on_event: Callable[[TrainEvent], None] | None = None,
                 hooks: list[Hook] | None = None, cancel: threading.Event | None = None,
                 extra_meta: dict | None = None, started: float | None = None):
        self.detector, self.samples, self.cfg = detector, samples, cfg
        # when the run was asked for (time.perf_counter()): a time budget counts from there, so the
        # data, the model's set-up and the device's start are inside it; default: the first step
        self.started = started
        self.output = Path(output)
        self.on_event = on_event or (lambda e: None)
        # the weight average, the caller's hooks, a periodic checkpoint (detector/train_hooks.py)
        self.hooks = [*([WeightAverage(cfg.ema)] if cfg.ema else []), *(hooks or []),
                      *([PeriodicCheckpointer(cfg.checkpoint_every)] if cfg.checkpoint_every else [])]
        self.result: TrainResult | None = None  # set when a run finishes (hooks' after_train read it)
        self.cancel = cancel or threading.Event()
        self.extra_meta = extra_meta or {}
        self.rank, self.world, local_rank = dist_info()
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
        self._refit_step: int | None = None  # a time budget's next look at the step time
        self._deadline: float | None = None  # perf_counter() past which a fitted run ends (DEADLINE_SLACK)
        self.step = 0
        self.images_seen = 0
        self.local_images = 0  # this rank's own count, to show every rank took part
        self.images_per_rank: list[int] = []
        self.last_losses: dict[str, float] = {}
        torch.manual_seed(cfg.seed)
        self.dataset = LabelledImages(samples, detector.categories, cfg.augment, cfg.seed + self.rank,
                                      cfg.copy_paste, cfg.rotate)
        self.sampler = AspectRatioBatches(groups, cfg.batch_size, cfg.seed, self.rank, self.world)
        prepare_roi_heads(detector.model, detector.categories, cfg.label_smoothing or 0.0)
        # With freeze_bn, whose BatchNorm statistics stay: an ImageNet trunk's (the pyramid's are
        # random and must learn theirs), else the whole backbone's (COCO's, a checkpoint's).
        self.frozen_bn_scope = detector.model.backbone.body if detector.meta.get("trunk") else detector.model.backbone
        draw_per_step(detector.model)
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
            self.model.transform.base_size = s
            if cfg.windows() is not None:
                # windows at the model's scale, resized by the dataset: the transform keeps them as they are
                self.dataset.windows = cfg.windows()
                self.dataset.min_scale = self.model.transform.min_scale
                self.model.transform._skip_resize = True
        self.ddp = None
        self._pool: ThreadPoolExecutor | None = None  # the step's threads while run() runs
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
        self.warm_steps = self._warm_steps()

        def schedule(step: int) -> float:  # linear warm-up, then cosine to 5% at total_steps
            warm = self.warm_steps
            if step < warm:
                return 0.001 + (1 - 0.001) * step / warm
            span = max(1, self.total_steps - warm)
            return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / span)))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        cuda = self.device.type == "cuda"
        # A GPU: bfloat16 where it has it (Ampere and later): float32's range, so no loss scaling
        # and no overflow from random initial weights; float16 with a GradScaler elsewhere.
        # A CPU with bfloat16 in hardware (AMX, AVX-512 BF16): bfloat16 autocast in one process
        # (cpu_autocast).
        self.amp = (cfg.amp and cuda) or (self.device.type == "cpu" and cpu_autocast(cfg.amp, self.world))
        self.amp_dtype = torch.float16 if cuda and not torch.cuda.is_bf16_supported() else torch.bfloat16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.amp_dtype == torch.float16)
        self.step_threads = step_threads(cfg, self.device, self.world)
        self.data_workers = data_workers(cfg.data_workers, self.device, self.world)

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
                        train_config=_jsonable(self.cfg.to_dict()),
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
            for m in self.frozen_bn_scope.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.eval()
        first_epoch = self.step // self.steps_per_epoch
        loader = data_loader(self.dataset, RunBatches(self.sampler, first_epoch), self.data_workers)
        for h in self.hooks:
            h.before_train(self)
        backend = f" ({dist.get_backend()})" if dist.is_initialized() else ""
        profile = self.extra_meta.get("profile")
        precision = str(self.amp_dtype).split(".")[-1]
        autocast = f"{precision} autocast" if self.amp else ""
        threads = f"RPN and RoI heads on {self.step_threads} threads" if self.step_threads > 1 else ""
        how = "".join(f", {x}" for x in (autocast, threads) if x)  # the dock shows it with the profile
        self.emit(TrainEvent("start", self.step, self.total_steps,
                             message=f"training on {len(self.samples)} images, {self.world} process(es)"
                                     f"{backend}, device {self.device}"
                                     + (f" ({autocast})" if autocast else "") + (f", {threads}" if threads else "")
                                     + (f"; profile {profile}: {self.extra_meta.get('profile_reason')}{how}"
                                        if profile else "")))
        t_last, n_last = time.perf_counter(), 0
        self._t_start = self.started if self.started is not None else t_last
        result: TrainResult | None = None
        # Worker processes fork here, on this thread, before the prefetch and step threads start.
        loaded = iter(loader)
        batches = None
        self.start_step_threads()
        try:
            epoch, taken = first_epoch, 0
            per_pass = len(self.sampler)  # batches in one pass (orientation groups may add part-batches)
            batches = _prefetched(loaded, prepare=_pinned if self.device.type == "cuda" else None)
            for images, targets in batches:
                if self.step >= self.total_steps:
                    break
                epoch = first_epoch + taken // per_pass
                taken += 1
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
                # Until a time budget has fitted the step count, total_steps is the profile's cap
                # (cpu-fast: 500): the budget's time left is the better estimate of the end.
                eta = {} if self._budget_fitted else \
                    {"eta_s": round(max(0.0, self.cfg.time_budget_s - (now - self._t_start)), 1)}
                ev = TrainEvent("step", self.step, self.total_steps, epoch,
                                self.optimizer.param_groups[0]["lr"], dict(self.last_losses),
                                round(ips, 3), metrics=eta)
                self.emit(ev)
                for h in self.hooks:
                    h.after_step(self, ev)
            epoch = first_epoch + math.ceil(taken / per_pass)
            self.images_per_rank = self._gather_counts()
            self.save(self.output, complete=True)
            self.emit(TrainEvent("done", self.step, self.total_steps, epoch, losses=self.last_losses,
                                 message=str(self.output)))
            self.result = result = TrainResult(True, str(self.output), self.step, self.images_seen,
                                               losses=self.last_losses)
            return result
        finally:
            if batches is not None:
                batches.close()  # stops the prefetch thread, whichever way the loop ended
            self.stop_step_threads()
            self.model.transform.min_size = (self.cfg.min_size,)
            self.model.transform._skip_resize = False
            self.model.eval()
            for h in self.hooks:
                h.after_train(self)

    def start_step_threads(self) -> None:
        """With step_threads > 1: the threads that take a batch's parts, each with its share of
        the cores (run() starts and stops them)."""
        if self.step_threads > 1 and self._pool is None:
            self._threads_before = torch.get_num_threads()
            share = max(1, self._threads_before // self.step_threads)
            self._pool = ThreadPoolExecutor(self.step_threads, thread_name_prefix="loupe-step",
                                            initializer=torch.set_num_threads, initargs=(share,))

    def _warm_steps(self) -> int:
        """The warm-up: cfg.warmup_steps, at most a fifth of the run."""
        return max(1, min(self.cfg.warmup_steps, self.total_steps // 5))

    def stop_step_threads(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
            torch.set_num_threads(self._threads_before)  # the workers changed the process's default

    def _fit_budget(self) -> None:
        """With a time budget: once a few steps are timed, set the step count that fits it; look
        again about 40 % of the way in, when the step time has settled (the first steps pay for
        kernel set-up per input shape: with bfloat16 on a CPU the first fit alone left ~10 % of
        the budget unused), and again 40 % of the rest after each look, measuring the step time
        since the last one, so a machine that slows down still ends its schedule (its learning
        rate decayed) near the budget; should it slow after the last look, the deadline ends it.
        With a longer limit (time_budget_max_s) a run short of BUDGET_EPOCHS passes over its
        images goes on towards them, up to that limit. The learning-rate schedule follows the
        step count."""
        budget = self.cfg.time_budget_s
        if not budget:
            return
        now = time.perf_counter()
        if self._deadline is not None and now > self._deadline and MIN_BUDGET_STEPS <= self.step < self.total_steps:
            self.total_steps = self.step  # slower than measured since the last look: end here
            return
        if self._budget_fitted and self.step != self._refit_step:
            return
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
        longest, passes = self.cfg.time_budget_max_s, BUDGET_EPOCHS * self.steps_per_epoch
        if longest and fit < passes:  # short of its passes: towards them, within the longer limit
            more = self.step + int(max(0.0, longest - (now - self._t_start)) / max(per_step, 1e-6))
            fit = max(fit, min(passes, more))
        if self.world > 1:  # every rank must stop at the same step
            t = torch.tensor([fit], device=self.device if self.device.type == "cuda" else "cpu")
            dist.all_reduce(t, op=dist.ReduceOp.MIN)
            fit = int(t.item())
        cap = self._step_cap
        self.total_steps = max(min(cap, fit), min(cap, MIN_BUDGET_STEPS), self.step)
        first = not self._budget_fitted
        if first:  # a fifth of the run the budget gives, not of the profile's cap (500 -> a 100-step
            # cap on the warm-up, a third of a 160-step run); set once, so a later look moves no step
            # from warm-up to decay
            self._deadline = self._t_start + max(budget, longest or 0.0) * DEADLINE_SLACK
            self.warm_steps = min(self.warm_steps, self._warm_steps())
        self._budget_fitted = True
        # the next look: 40 % of the steps left from here, while at least CALIBRATION_STEPS are
        # left after it (a laptop slows down as it warms; a shared VM's speed moves in phases)
        self._refit_step = None
        again = self.step + max(CALIBRATION_STEPS, (self.total_steps - self.step) * 2 // 5)
        if again + CALIBRATION_STEPS <= self.total_steps:
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
            self.optimizer.zero_grad(set_to_none=True)
            parts = min(self.step_threads, len(images))
            # the model's random draws on a CPU: a seed for the whole batch and one a part, drawn
            # here in order, so a seed gives the same run however the threads interleave
            # (step_random.py); a GPU draws on the device, as torchvision does
            seeds = torch.randint(2 ** 62, (parts + 1,)).tolist() if self.device.type == "cpu" else [None]
            if parts == 1:
                losses, total = self._forward_backward(model, images, targets, seeds[0])
            else:
                losses, total = self._split_heads(images, targets, seeds, self._pool)
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

    def _forward_backward(self, model, images, targets, seed: int | None):
        """The whole batch's losses and their weighted sum; its gradient goes into the weights."""
        with drawing_from(seed), torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            losses = model(images, targets)
        return self._weighted_backward(losses, 1.0)

    def _split_heads(self, images, targets, seeds: list[int], pool: ThreadPoolExecutor | None):
        """A step with the batch in ``len(seeds) - 1`` parts (step_threads): the transform and the
        backbone (its BatchNorm as for the whole batch) on this thread; the RPN and the RoI heads
        one part a thread on ``pool`` (None: one after the other here), each part's backward
        stopping at its slice of the features; then the backbone's backward from those slices'
        gradients. The threads' autocast is their own, so each part sets it."""
        m, n = self.model, len(images)
        with drawing_from(seeds[0]), torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            batch, targets = m.transform(images, targets)
            features = m.backbone(batch.tensors)
        cuts = [round(k * n / (len(seeds) - 1)) for k in range(len(seeds))]
        spans = list(zip(cuts, cuts[1:]))
        slices = [{k: v[a:b].detach().requires_grad_() for k, v in features.items()} for a, b in spans]

        def part(j: int):
            (a, b), feats = spans[j], slices[j]
            sub = ImageList(batch.tensors[a:b], batch.image_sizes[a:b])
            with drawing_from(seeds[j + 1]), torch.autocast(self.device.type, dtype=self.amp_dtype,
                                                            enabled=self.amp):
                proposals, rpn_losses = m.rpn(sub, feats, targets[a:b])
                _, losses = m.roi_heads(feats, proposals, sub.image_sizes, targets[a:b])
            return self._weighted_backward({**losses, **rpn_losses}, (b - a) / n)

        if pool is None:
            done = [part(j) for j in range(len(spans))]
        else:
            futures = [pool.submit(part, j) for j in range(len(spans))]
            wait(futures)  # every part ends before an error (the first part's) is raised
            done = [f.result() for f in futures]
        # a level no part read (the RPN may skip stride 4; a part may pool nothing there) has no gradient
        grads = {k: [sl[k].grad if sl[k].grad is not None else torch.zeros_like(sl[k]) for sl in slices]
                 for k in features}
        torch.autograd.backward(list(features.values()), [torch.cat(grads[k]) for k in features])
        shares = [(b - a) / n for a, b in spans]
        losses = {k: sum(d[0][k].detach().float() * w for d, w in zip(done, shares)) for k in done[0][0]}
        return losses, sum(d[1].detach().float() * w for d, w in zip(done, shares))

    def _weighted_backward(self, losses: dict, share: float):
        """The losses (after the hooks) weighted and summed; the sum's gradient, times ``share``
        (the losses' part of the batch), goes into the weights. Stops the run on a non-finite loss."""
        for h in self.hooks:
            losses = h.after_loss(self, losses)
        # the terms are reported as they are; "loss" is this weighted sum, what the model learns from
        weights = self.cfg.loss_weights()
        total = sum(v * weights.get(k, 1.0) for k, v in losses.items())
        if not torch.isfinite(total):
            bad = [k for k, v in losses.items() if not torch.isfinite(v)]
            raise TrainingError(
                f"the loss became {float(total.detach())} at step {self.step + 1} ({', '.join(bad)}): "
                "training stopped and the previous model is kept. Lower the learning rate "
                f"(now {self.optimizer.param_groups[0]['lr']:.2g}) or check the labels.")
        self.scaler.scale(total * share if share != 1.0 else total).backward()
        return losses, total


def step_threads(cfg: TrainConfig, device: torch.device, world: int) -> int:
    """How many threads a training step runs its images' RPN and RoI heads on (_split_heads).
    Only a CPU in a single process: there most of a step is Python and single-threaded work (NMS,
    tensors too small to split), so a second core made one thread only 15 % faster, and the heads
    on two threads gave the demo's first model ~1.4x the steps in its time budget
    (bench/RESULTS.md). A GPU (one stream) and DistributedDataParallel (one forward at a time)
    take the batch whole. Default: one thread per image of the batch, at most one a core."""
    if device.type != "cpu" or world > 1:
        return 1
    asked = cfg.step_threads if cfg.step_threads is not None else torch.get_num_threads()
    return max(1, min(asked, cfg.batch_size or 1))


class _DownloadReport:
    """Downloads of the weights a run starts from as "prepare" events, one per MB, and the
    seconds they took (``pretrained.download`` calls it once the server answers, then per chunk)."""

    def __init__(self, report: Callable[[TrainEvent], None]):
        self.report = report
        self.files: dict[str, list] = {}  # name -> [first call, last call, last MB reported]

    def __call__(self, name: str, done: int, total: int) -> None:
        now = time.perf_counter()
        f = self.files.setdefault(name, [now, now, -1])
        f[1] = now
        mb, of = done >> 20, total >> 20
        if mb != f[2]:
            f[2] = mb
            self.report(TrainEvent("prepare", mb, of, message=f"downloading {name}: {mb} of {of or '?'} MB"))

    def seconds(self) -> float:
        return sum(last - first for first, last, _ in self.files.values())


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=str))


# ------------------------------------------------------------------------------------------
# From a project (the data: detector/train_data.py; what a run starts from: detector/train_setup.py)
# ------------------------------------------------------------------------------------------
def train_project(project, cfg: TrainConfig, output: str | os.PathLike, *, progress: bool = False,
                  json_events: bool = False, on_event: Callable[[TrainEvent], None] | None = None,
                  hooks: list[Hook] | None = None, cancel: threading.Event | None = None,
                  started: float | None = None) -> TrainResult:
    """Fine-tune on the project's reviewed images (minus the held-out split) and write ``output``.
    A time budget counts from ``started`` (time.perf_counter(); default: this call; ``loupe train``
    passes its own start, so importing torch is inside it too): reading the data and building the
    model are inside it, a download of the weights it starts from is not (it happens once;
    "prepare" events report it)."""
    started = time.perf_counter() if started is None else started
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
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=1, unit="step", desc="training", disable=dist_info()[0] != 0)

    def report(ev: TrainEvent) -> None:
        if json_events:
            print(ev.to_json(), flush=True)
        if bar is not None:
            if ev.kind == "prepare":
                bar.set_description_str(ev.message)
            elif ev.kind == "start":
                bar.set_description_str("training")
                bar.reset(total=ev.total_steps)
                bar.update(ev.step)
                bar.write(det.notice)
                bar.write(f"profile {profile.name}: {profile.reason}")
            elif ev.kind == "step":
                bar.update(1)
                bar.set_postfix(loss=ev.losses.get("loss"), ips=ev.images_per_s)
        if on_event is not None:
            on_event(ev)

    torch.manual_seed(cfg.seed)  # the seed covers random initial weights too, not only the run
    fetch = _DownloadReport(report)
    det, resume_ckpt = prepare_detector(project, cfg, progress=fetch, cancel=cancel)
    # A one-time download of the weights it starts from is not the run's: the budget starts after it.
    started += fetch.seconds()
    if cancel is not None and cancel.is_set():  # while setting up (the download): nothing to save
        report(TrainEvent("cancelled", message="cancelled before the first step; nothing saved"
                          + (" (the partial download is kept for the next try)" if fetch.seconds() else "")))
        return TrainResult(False, None, 0, 0, cancelled=True, message="cancelled")
    cfg = with_start_defaults(cfg, det, resume_ckpt)
    profile = replace(profile, reason=profile.reason + trunk_clause(cfg, det))
    trainer = Trainer(det, samples, groups, cfg, output, on_event=report, hooks=hooks, cancel=cancel,
                      extra_meta={"holdout": {"fraction": cfg.holdout,
                                              "images": [r.path for r in held]},
                                  "notice": det.notice, "profile": profile.name,
                                  "profile_reason": profile.reason,
                                  "from_random_init": starts_from_random(cfg, det)[1],
                                  **({"trunk": det.meta["trunk"]} if det.meta.get("trunk") else {})},
                      started=started)
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
