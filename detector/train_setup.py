"""What a run starts from: the model (random, COCO, a checkpoint or a run to resume), the settings
the profile fills in, and the optimizer and learning rate for where the weights start."""

from __future__ import annotations

import math
import statistics
import threading
from dataclasses import replace

from . import profiles
from .errors import TrainingError
from .devices import cpu_autocast, dist_info, pick_device
from .model import (CheckpointError, Detector, Fetching, ModelConfig, build_model, checkpoint_meta,
                    detector_from_checkpoint, load_checkpoint)
from .profiles import Profile
from .train_config import DEFAULT_BACKBONE, LIGHT_BACKBONE, OPTIMIZERS, TrainConfig
from .train_data import Sample
from .trunk import IMAGENET, NO_TRUNK, TRUNK_MB, trunk_cache_path, trunk_state_dict

# bench/RESULTS.md has the runs behind these (bench_e2e.py, 25 reviewed synthetic images).
FROM_SCRATCH_ADAMW_LR = 1e-3  # for batch 4, scaled by sqrt(batch / 4)
FROM_SCRATCH_SGD_LR_PER_IMAGE = 0.005
FINE_TUNE_SGD_LR_PER_IMAGE = 0.01 / 8  # torchvision's reference recipe: 0.02 for 16 images
FINE_TUNE_ADAMW_LR = 1e-4
# Fine-tuning learned weights (COCO's, or a checkpoint's): the stem and the first stage stay as
# they are and the backbone's BatchNorm keeps its running statistics (batches of 2-4 images make
# noisy ones), torchvision's reference recipe. bench_transfer.py (pretrain on one synthetic set,
# fine-tune on 8 images of another): unseen segm AP 0.447 against 0.372 training everything.
FINE_TUNE_TRAINABLE_LAYERS = 3
# The keypoint loss (a softmax over a 56 x 56 heatmap: ~8 at the start, ~2 after a first model's
# training) outweighs the others (~0.05-1) several times. AdamW scales each weight's step by its
# own gradient size, so in the shared backbone the summed gradient's direction is what counts and
# the keypoint loss set it. At a quarter, unseen segm AP50 of the demo's first model went from 0.450
# to 0.487 (means of 4 and 7 runs, bench/RESULTS.md). SGD runs (learned weights) keep torchvision's 1.
ADAMW_KEYPOINT_LOSS_WEIGHT = 0.25
# The region classifier's loss is the smallest term by the end of a first model's run (~0.06) while
# the classes are what such a model gets wrong on unseen images (boxes and masks generalise). At
# twice its weight the demo's first model went from unseen segm AP50 0.477 (9 runs) to 0.496 (8),
# nuclei 0.200 -> 0.217 (3 seeds each): small, within one seed's spread, not worse on either.
ADAMW_CLASSIFIER_LOSS_WEIGHT = 2.0
# Label smoothing of the classifier's targets (--label-smoothing) was measured against the same
# failure and left off (0) for every run: at 0.1 the demo's first model gained within the spread
# (unseen segm AP50 0.491 -> 0.504, seeds 0-2 at a fixed 250 steps) but nuclei lost on both seeds
# tried (0.194 / 0.232 -> 0.112 / 0.197; bench/RESULTS.md).
# TrainConfig field -> its default for AdamW runs ...
ADAMW_LOSS_SETTINGS = {"keypoint_loss_weight": ADAMW_KEYPOINT_LOSS_WEIGHT,
                       "classifier_loss_weight": ADAMW_CLASSIFIER_LOSS_WEIGHT}
# ... and torchvision's value: SGD runs', and runs' saved before the field existed
TORCHVISION_LOSS_SETTINGS = {"keypoint_loss_weight": 1.0, "classifier_loss_weight": 1.0, "label_smoothing": 0.0}


def _loss_settings(cfg: TrainConfig, fallback: dict) -> dict[str, float]:
    """The loss settings the user left open (None), taken from ``fallback``, else torchvision's."""
    out = {}
    for name, plain in TORCHVISION_LOSS_SETTINGS.items():
        value = getattr(cfg, name)
        if value is None:
            value = fallback.get(name)
        out[name] = plain if value is None else value
    return out


def prepare_detector(project, cfg: TrainConfig, *, progress: Fetching | None = None,
                     cancel: threading.Event | None = None) -> tuple[Detector, dict | None]:
    """The model to start from, and the checkpoint to resume (if any). ``progress`` and ``cancel``
    reach a download of the weights it starts from (COCO's files, the light model's ImageNet
    trunk), when one is needed."""
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
        layers = cfg.trainable_layers if cfg.trainable_layers is not None else \
            min(saved.trainable_layers, FINE_TUNE_TRAINABLE_LAYERS)
        mcfg = replace(mcfg, trainable_layers=layers)
        try:
            det = detector_from_checkpoint(ckpt, tuple(cats), source=str(cfg.weights), config=mcfg)
        except CheckpointError as exc:
            raise TrainingError(str(exc)) from exc
        return det, None
    backbone = cfg.backbone or DEFAULT_BACKBONE
    pretrained = cfg.weights == "coco" and backbone == DEFAULT_BACKBONE
    # The light model's trunk from ImageNet (detector.trunk): fine-tuned like learned weights
    # (torchvision's recipe for a pretrained backbone: the stem and first stage stay, and so do
    # the trunk's BatchNorm statistics), while the pyramid and heads learn from random weights.
    trunk = trunk_state_dict(cfg.trunk, progress=progress, cancel=cancel) \
        if cfg.weights == "coco" and backbone == LIGHT_BACKBONE else None
    layers = cfg.trainable_layers if cfg.trainable_layers is not None else \
        (FINE_TUNE_TRAINABLE_LAYERS if pretrained or (trunk and trunk[0]) else 5)
    mcfg = ModelConfig(backbone=backbone, min_size=cfg.min_size, max_size=cfg.max_size,
                       trainable_layers=layers, **overrides)
    det = build_model(categories=cats, weights=cfg.weights, config=mcfg, trunk=trunk, progress=progress,
                      cancel=cancel)
    return det, None


def learned_start(cfg: TrainConfig) -> bool:
    """Whether the run starts from learned weights: torchvision's COCO weights in the cache (for
    the ResNet-50 FPN v2 they fit), or a checkpoint (to start from or resume) that does not go back
    to random weights (``from_random_init``: a first model trained here from random weights, and
    every round after it, say so). An unreadable checkpoint counts as learned; prepare_detector
    then refuses it, naming the problem."""
    from .model import coco_cache_path

    path = cfg.resume or (cfg.weights if cfg.weights not in (None, "none", "coco") else None)
    if path:
        try:
            return not checkpoint_meta(path).get("from_random_init", False)
        except CheckpointError:
            return True
    return cfg.weights == "coco" and cfg.backbone in (None, DEFAULT_BACKBONE) and coco_cache_path().is_file()


def _short_side(box) -> float:
    """A box's shorter side (x0, y0, x1, y1): the object size the profiles reason with."""
    return min(box[2] - box[0], box[3] - box[1])


def apply_profile(cfg: TrainConfig, sizes: list[tuple[int, int]],
                  samples: list[Sample] = ()) -> tuple[TrainConfig, Profile]:
    """Fill the settings left open from the profile (device, image sizes); what was set stays.

    Also raises the detections kept per image for dense data: at least 1.5x the most instances
    in one reviewed image (COCO's 100 would cap recall on crowded images such as nuclei).
    """
    learned = learned_start(cfg)
    try:
        objects = [_short_side(i.box) for s in samples for i in s.instances]
        device = pick_device(cfg.device)
        float32_cpu = device.type == "cpu" and not cpu_autocast(cfg.amp, dist_info()[1])
        prof = profiles.choose(cfg.profile, device, sizes, objects, learned=learned, float32_cpu=float32_cpu)
    except ValueError as exc:
        raise TrainingError(str(exc)) from exc
    # learned weights keep their network: COCO's ResNet-50 FPN v2, a checkpoint's own
    backbone = cfg.backbone if cfg.backbone is not None or learned else prof.backbone
    min_size = cfg.min_size or prof.min_size
    prof_overrides = dict(prof.model_overrides)
    if backbone != LIGHT_BACKBONE or cfg.weights not in (None, "none", "coco"):
        # The pyramid's width shapes the weights: only a new ResNet-18 model takes the profile's.
        prof_overrides.pop("fpn_channels", None)
    overrides = {**prof_overrides, **cfg.model_overrides}
    most = max((len(s.instances) for s in samples), default=0)
    if "box_detections_per_img" not in overrides and most * 1.5 > 100:
        overrides["box_detections_per_img"] = int(math.ceil(most * 1.5))
    max_size = cfg.max_size or max(min_size, int(min_size * 5 / 3))
    crop = prof.crop if cfg.crop is None else cfg.crop
    # A floor on the resize factor (profiles.scale_floor) where the run trains on windows: a
    # step's cost stays that of its windows however large the images go in (measured there only;
    # whole images at the floor's size would cost a GPU's short run steps, not measured yet).
    on_windows = replace(cfg, min_size=min_size, crop=crop).windows() is not None
    if on_windows and "min_scale" not in overrides and prof.name != "reference":
        aim = profiles.FLOAT32_CPU_OBJECT_PX if float32_cpu and prof.name == "cpu-fast" else profiles.OBJECT_PX
        per_image = [(s.width, s.height, statistics.median(_short_side(i.box) for i in s.instances))
                     for s in samples if s.instances and s.width and s.height]
        # set either way: a round from a checkpoint takes this round's choice, not the saved one
        overrides["min_scale"] = profiles.scale_floor(per_image, min_size, max_size, aim)
    if overrides.get("min_scale"):  # the profile's floor, or the person's (--model-option min_scale=F)
        max_size = cfg.max_size or profiles.FLOOR_MAX_SIDE * min_size
    explicit = bool(cfg.iterations or cfg.epochs)
    iterations = cfg.iterations if explicit else prof.iterations
    own = bool(cfg.time_budget_s or explicit)  # a length the person set replaces the profile's
    budget = cfg.time_budget_s if own else prof.time_budget_s
    budget_max = cfg.time_budget_max_s or (None if own else prof.time_budget_max_s)
    out = replace(cfg, backbone=backbone, min_size=min_size, iterations=iterations, time_budget_s=budget,
                  time_budget_max_s=budget_max,
                  max_size=max_size,
                  batch_size=cfg.batch_size or prof.batch_size, model_overrides=overrides,
                  crop=crop)
    rois = overrides.get("box_batch_size_per_image", ModelConfig.box_batch_size_per_image)
    net = backbone or "the checkpoint's or ResNet-50 FPN v2"
    windows = f", trained on {out.crop} px windows" if out.windows() else ""
    floor = overrides.get("min_scale")
    floor = f", larger images kept at x{floor:.2f} (long side up to {max_size} px)" if floor else ""
    prof = replace(prof, reason=f"{prof.reason} -> {net} backbone, {min_size} px{floor}, batch {out.batch_size}, "
                                f"{rois} sampled regions{windows}")
    return out, prof


def trunk_clause(cfg: TrainConfig, det: Detector) -> str:
    """What the dock's profile line says about a new light model's trunk: from ImageNet, or
    random and which file would change that (the run's notice has the address)."""
    if det.config.backbone != LIGHT_BACKBONE or cfg.weights != "coco" or cfg.resume:
        return ""  # not a new light model (a checkpoint's trunk is that checkpoint's)
    if det.meta.get("trunk"):
        return ", trunk from ImageNet weights" if cfg.trunk == IMAGENET else f", trunk from {cfg.trunk}"
    if cfg.trunk == NO_TRUNK:
        return ", random trunk (as asked)"
    if cfg.trunk != IMAGENET:
        return f", random trunk: {cfg.trunk} refused (the run's notice says why)"
    return f", random trunk: no {trunk_cache_path().name} (ImageNet, {TRUNK_MB} MB)"


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
    Learned weights keep their backbone BatchNorm statistics (FINE_TUNE_TRAINABLE_LAYERS).
    AdamW runs weigh the keypoint loss by ADAMW_KEYPOINT_LOSS_WEIGHT and the classifier's by
    ADAMW_CLASSIFIER_LOSS_WEIGHT, SGD runs both by 1 (torchvision's); no run smooths the classifier's
    targets unless asked (--label-smoothing).
    """
    if cfg.optimizer is not None and cfg.optimizer not in OPTIMIZERS:
        raise TrainingError(f"unknown optimizer {cfg.optimizer!r} (known: {', '.join(OPTIMIZERS)})")
    if resume_ckpt is not None:
        run = resume_ckpt.get("train_config") or {}
        saved = run.get("optimizer") or "sgd"
        if cfg.optimizer not in (None, saved):
            raise TrainingError(f"{cfg.resume}: that run used {saved}; resume it with the same "
                                f"optimizer (or leave the optimizer unset)")
        return replace(cfg, optimizer=saved, lr=cfg.lr if cfg.lr is not None else run.get("lr"),
                       freeze_bn=cfg.freeze_bn if cfg.freeze_bn is not None else run.get("freeze_bn"),
                       **_loss_settings(cfg, run))
    random_now, random_start = starts_from_random(cfg, det)
    batch = cfg.batch_size or 2
    optimizer = cfg.optimizer or ("adamw" if random_start else "sgd")
    lr = cfg.lr
    if lr is None:
        if optimizer == "adamw":
            lr = FROM_SCRATCH_ADAMW_LR * math.sqrt(batch / 4) if random_start else FINE_TUNE_ADAMW_LR
        else:
            lr = (FROM_SCRATCH_SGD_LR_PER_IMAGE if random_now else FINE_TUNE_SGD_LR_PER_IMAGE) * batch
    # learned weights keep their statistics (an ImageNet trunk its own: Trainer.frozen_bn_scope)
    freeze_bn = cfg.freeze_bn if cfg.freeze_bn is not None else (not random_now or bool(det.meta.get("trunk")))
    return replace(cfg, optimizer=optimizer, lr=lr, freeze_bn=freeze_bn,
                   **_loss_settings(cfg, ADAMW_LOSS_SETTINGS if optimizer == "adamw" else {}))
