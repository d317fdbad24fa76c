"""The model: torchvision's Mask R-CNN with a keypoint branch on the same RoI heads, plus checkpoints.

Label ``i + 1`` is ``categories[i]`` (0 is background). The keypoint head predicts the keypoints of
every keypoint category side by side: category ``c`` owns the slice ``keypoint_slices()[c]``.
"""

from __future__ import annotations

import os
import pickle
import platform
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models import resnet18, resnet50
from torchvision.models.detection import MaskRCNN, MaskRCNN_ResNet50_FPN_V2_Weights
from torchvision.models.detection import KeypointRCNN_ResNet50_FPN_Weights
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead
from torchvision.models.detection.keypoint_rcnn import KeypointRCNNHeads, KeypointRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from .errors import LoupeError
from .domain import Category
from .heads import (CoarseRPN, Float32Anchors, StretchingTransform, in_float32, keypoint_slices,  # noqa: F401
                    prepare_roi_heads)
from .pooling import PyramidRoIAlign, StemMaxPool
from .train_config import BACKBONES, DEFAULT_BACKBONE, GPU_SIZE, LIGHT_BACKBONE
from .transfer import class_rows_by_name, keypoint_rows_by_name, transfer_weights  # noqa: F401
from .trunk import load_trunk

CHECKPOINT_FORMAT = "loupe-checkpoint"
CHECKPOINT_VERSION = 1
# Class-specific layers: rebuilt (rows remapped by name) when the category list changes.
class CheckpointError(LoupeError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and the two-stage knobs. Sizes are pixels of the resized model input."""

    backbone: str = DEFAULT_BACKBONE
    min_size: int = GPU_SIZE
    max_size: int = 1333
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)  # one per FPN level
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)  # K = len(aspect_ratios) anchors/location
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    rpn_fg_iou_thresh: float = 0.7  # anchor positive at IoU >= 0.7
    rpn_bg_iou_thresh: float = 0.3  # negative below 0.3
    rpn_batch_size_per_image: int = 256
    box_batch_size_per_image: int = 512
    box_positive_fraction: float = 0.25  # of the sampled regions at most this share positive
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    box_detections_per_img: int = 100
    trainable_layers: int = 5
    fpn_channels: int = 256  # feature pyramid width (resnet18 only); 128 is the CPU profile's
    # The stride-4 level is a float32 CPU step's largest part: the RPN's 3x3 convolution there costs
    # about as much as the trunk's whole stride-4 stage (bench/RESULTS.md, "A CPU without AMX").
    rpn_stride4: bool = True  # False: the RPN proposes from strides 8-64 only (anchor_sizes[:4])
    # Dim images (values spanning under half of 0-255, as most fluorescence microscopy) stretched
    # to the full range before the network (detector/heads.py StretchingTransform); photos pass as
    # they are. Checkpoints from before the option read False: their models never saw it.
    stretch_dim: bool = True
    # A floor on the factor images are resized by (0: none, torchvision's rule alone). torchvision
    # gives every image the same shorter side (min_size), so an image larger than the others shrinks
    # more, and where objects keep their size in pixels across images (microscopy, scans) a large
    # image's objects come out too small to find. With a floor, each image is resized by at least
    # this factor (the long side at most max_size); detector.profiles.scale_floor decides.
    min_scale: float = 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["anchor_sizes"] = list(self.anchor_sizes)
        d["aspect_ratios"] = list(self.aspect_ratios)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw.setdefault("stretch_dim", False)  # a checkpoint from before the option
        for k in ("anchor_sizes", "aspect_ratios"):
            if k in kw:
                kw[k] = tuple(kw[k])
        cfg = cls(**kw)
        if cfg.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {cfg.backbone!r} (known: {', '.join(BACKBONES)})")
        return cfg


@dataclass
class Detector:
    """A built model with the categories its labels mean and how it was made."""

    model: MaskRCNN
    categories: tuple[Category, ...]
    config: ModelConfig
    notice: str = ""
    meta: dict = field(default_factory=dict)

    def keypoint_slices(self) -> dict[int, slice]:
        return keypoint_slices(self.categories)

    @property
    def num_keypoints(self) -> int:
        return sum(len(c.keypoints) for c in self.categories)


def _architecture(num_classes: int, num_keypoints: int, cfg: ModelConfig) -> MaskRCNN:
    """Random-init Mask R-CNN with real BatchNorm (trainable from scratch), keypoint head if K>0."""
    rpn_sizes = cfg.anchor_sizes if cfg.rpn_stride4 else cfg.anchor_sizes[:4]
    anchors = Float32Anchors(tuple((s,) for s in rpn_sizes), (tuple(cfg.aspect_ratios),) * len(rpn_sizes))
    kw = dict(
        min_size=cfg.min_size, max_size=cfg.max_size, rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
        rpn_fg_iou_thresh=cfg.rpn_fg_iou_thresh, rpn_bg_iou_thresh=cfg.rpn_bg_iou_thresh,
        rpn_batch_size_per_image=cfg.rpn_batch_size_per_image,
        box_batch_size_per_image=cfg.box_batch_size_per_image,
        box_positive_fraction=cfg.box_positive_fraction,
        box_score_thresh=cfg.box_score_thresh, box_nms_thresh=cfg.box_nms_thresh,
        box_detections_per_img=cfg.box_detections_per_img,
        # torchvision's poolers, with the CPU backward spread over the cores (detector/pooling.py)
        box_roi_pool=PyramidRoIAlign(["0", "1", "2", "3"], 7, 2),
        mask_roi_pool=PyramidRoIAlign(["0", "1", "2", "3"], 14, 2),
    )
    if len(cfg.anchor_sizes) != 5:
        raise ValueError("anchor_sizes needs one size per FPN level (5)")
    build = BACKBONE_BUILDERS.get(cfg.backbone)
    if build is None:
        raise ValueError(f"unknown backbone {cfg.backbone!r} (known: {', '.join(BACKBONES)})")
    model, kp_layers = build(cfg, num_classes, anchors, kw)
    model.backbone.body.maxpool = StemMaxPool(kernel_size=3, stride=2, padding=1)  # same pool, faster on a CPU
    if not cfg.rpn_stride4:
        model.rpn.__class__ = CoarseRPN
    model.transform.__class__ = StretchingTransform
    model.transform.stretch_dim = cfg.stretch_dim
    model.transform.min_scale, model.transform.base_size = cfg.min_scale, cfg.min_size
    if num_keypoints:
        rh = model.roi_heads
        rh.keypoint_roi_pool = PyramidRoIAlign(["0", "1", "2", "3"], 14, 2)
        rh.keypoint_head = KeypointRCNNHeads(model.backbone.out_channels, kp_layers)
        rh.keypoint_predictor = KeypointRCNNPredictor(kp_layers[-1], num_keypoints)
    for m in (model.rpn.head.cls_logits, model.rpn.head.bbox_pred, model.roi_heads.box_predictor):
        in_float32(m)
    return model


def _resnet50_v2(cfg: ModelConfig, num_classes: int, anchors: AnchorGenerator, kw: dict) -> tuple[MaskRCNN, tuple]:
    """The layout of torchvision's maskrcnn_resnet50_fpn_v2, so its COCO weights load as they are."""
    bn = nn.BatchNorm2d
    backbone = _resnet_fpn_extractor(resnet50(norm_layer=bn), cfg.trainable_layers, norm_layer=bn)
    model = MaskRCNN(
        backbone, num_classes=num_classes,
        rpn_head=RPNHead(256, anchors.num_anchors_per_location()[0], conv_depth=2),
        box_head=FastRCNNConvFCHead((256, 7, 7), [256] * 4, [1024], norm_layer=bn),
        mask_head=MaskRCNNHeads(256, [256] * 4, 1, norm_layer=bn), **kw)
    return model, (512,) * 8


def _resnet18(cfg: ModelConfig, num_classes: int, anchors: AnchorGenerator, kw: dict) -> tuple[MaskRCNN, tuple]:
    """The light backbone; ``fpn_channels`` below 256 narrows the pyramid and the heads."""
    bn = nn.BatchNorm2d
    backbone = _resnet_fpn_extractor(resnet18(norm_layer=bn), cfg.trainable_layers, norm_layer=bn)
    ch = cfg.fpn_channels
    if ch != 256:  # a narrower pyramid: the FPN, RPN and heads at stride 4 dominate a CPU step
        backbone.fpn = FeaturePyramidNetwork([64, 128, 256, 512], ch, extra_blocks=LastLevelMaxPool(),
                                             norm_layer=bn)
        backbone.out_channels = ch
    model = MaskRCNN(backbone, num_classes=num_classes,
                     mask_head=MaskRCNNHeads(ch, [ch] * 2, 1, norm_layer=bn), **kw)
    if ch != 256:  # torchvision's default mask predictor assumes 256 channels
        model.roi_heads.mask_predictor = MaskRCNNPredictor(ch, ch, num_classes)
    return model, (ch,) * 4


# name -> builder (model, keypoint head widths); the names and labels are in detector/train_config.py
BACKBONE_BUILDERS = {DEFAULT_BACKBONE: _resnet50_v2, LIGHT_BACKBONE: _resnet18}
assert set(BACKBONE_BUILDERS) == set(BACKBONES), "detector/train_config.py BACKBONES and the builders differ"


# A download's progress as the model side reports it: (file name, bytes done, bytes in all or 0).
Fetching = Callable[[str, int, int], None]


def coco_state_dict(which: str = "mask", *, progress: Fetching | None = None,
                    cancel: threading.Event | None = None) -> dict[str, torch.Tensor] | None:
    """torchvision's COCO weights from its cache (downloaded there if possible: ``pretrained.cached``,
    with ``progress`` and ``cancel``), else None."""
    from .pretrained import WeightsError, cached, read_tensors  # it imports this module

    w = (MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1 if which == "mask"
         else KeypointRCNN_ResNet50_FPN_Weights.COCO_V1)
    try:
        return read_tensors(cached(w.url, coco_cache_path(which), progress=progress, cancel=cancel))
    except WeightsError:  # offline, a failed download, a broken cache file: the next option
        return None


def coco_cache_path(which: str = "mask") -> Path:
    w = (MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1 if which == "mask"
         else KeypointRCNN_ResNet50_FPN_Weights.COCO_V1)
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(w.url)


def build_model(*, categories: list[Category] | tuple[Category, ...], weights: str | os.PathLike | None = "coco",
                config: ModelConfig | None = None, trunk: tuple[dict | None, str] | None = None,
                progress: Fetching | None = None, cancel: threading.Event | None = None) -> Detector:
    """Build a Detector for ``categories``.

    ``weights``: a Loupe checkpoint path; ``"coco"`` for torchvision's COCO weights when they are
    in its cache or downloadable (mapped onto categories whose names match COCO's); ``None`` or
    ``"none"`` for random initialisation. Whatever cannot be had falls back to the next option,
    and ``Detector.notice`` says so. ``trunk``: for the light backbone with ``"coco"``, the
    (ImageNet weights or None, where from or why not) of ``detector.trunk.trunk_state_dict``.
    ``progress`` and ``cancel``: for a download of COCO's files (``coco_state_dict``).
    """
    categories = tuple(categories)
    if not categories:
        raise ValueError("the project has no categories yet: add one before building a model")
    if weights not in (None, "none", "coco"):
        ckpt = load_checkpoint(weights)
        return detector_from_checkpoint(ckpt, categories, source=str(weights), config=config)
    cfg = config or ModelConfig()
    nk = sum(len(c.keypoints) for c in categories)
    model = _architecture(len(categories) + 1, nk, cfg)
    notice = ""
    pretrained = False
    meta: dict = {"weights": str(weights)}
    if weights == "coco":
        if cfg.backbone != DEFAULT_BACKBONE:
            sd, where = trunk or (None, "")
            if sd is not None:
                load_trunk(model.backbone.body, sd)
                meta["trunk"] = where
                notice = (f"The {BACKBONES[cfg.backbone]} trunk starts from {where}; the pyramid and heads "
                          "from random weights. Review a few images and train.")
            else:
                cached = coco_cache_path().is_file()
                notice = (f"Random initial weights ({cfg.backbone}): "
                          + ("torchvision's COCO weights fit ResNet-50 FPN v2 only" if cached else
                             "no COCO weights in torchvision's cache") + (f"; {where}" if where else "")
                          + ". Review a few images and train.")
        else:
            sd = coco_state_dict("mask", progress=progress, cancel=cancel)
            if sd is None:
                notice = ("No pretrained weights found (torchvision's COCO Mask R-CNN is not in "
                          f"{coco_cache_path().parent} and could not be downloaded): starting "
                          "from random weights. Review a few images and train.")
            else:
                names = MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1.meta["categories"]
                rows = class_rows_by_name(categories, names)
                transfer_weights(model, sd, rows, {})
                pretrained = True
                matched = [categories[d - 1].name for d in rows if d]
                notice = "Started from torchvision's COCO Mask R-CNN weights" + (
                    f"; categories matched to COCO: {', '.join(matched)}" if matched else "")
                if nk:
                    notice += _coco_keypoints(model, categories, progress, cancel)
    else:
        notice = "Random initial weights (as asked): review a few images and train."
    # ``from_scratch``: no learned weights at all; the trainer picks its from-scratch defaults.
    # ``trunk``: where a light model's trunk came from (ImageNet); the rest of it is random.
    return Detector(model, categories, cfg, notice, {**meta, "from_scratch": not pretrained})


def _coco_keypoints(model: MaskRCNN, categories: tuple[Category, ...], progress: Fetching | None = None,
                    cancel: threading.Event | None = None) -> str:
    """Person keypoints from torchvision's Keypoint R-CNN, where the schema's names match COCO's."""
    sd = coco_state_dict("keypoint", progress=progress, cancel=cancel)
    if sd is None:
        return "; no Keypoint R-CNN weights in the cache, keypoint head starts from random"
    names = KeypointRCNN_ResNet50_FPN_Weights.COCO_V1.meta["keypoint_names"]
    person = (Category("person", keypoints=tuple(names)),)
    rows = keypoint_rows_by_name(categories, person)
    if not rows:
        return "; no keypoint names match COCO's person keypoints"
    head = {k: v for k, v in sd.items() if k.startswith("roi_heads.keypoint_head.")}
    if all(model.state_dict()[k].shape == v.shape for k, v in head.items()):
        model.load_state_dict(head, strict=False)
    pred = {k: v for k, v in sd.items() if k.startswith("roi_heads.keypoint_predictor.")}
    transfer_weights(model, pred, {}, rows)
    return f"; {len(rows)} keypoints from COCO's Keypoint R-CNN"


# ------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------
def _category_dicts(categories) -> list[dict]:
    return [{"name": c.name, "color": c.color, "keypoints": list(c.keypoints),
             "skeleton": [list(p) for p in c.skeleton]} for c in categories]


def _categories_from(dicts: list[dict]) -> tuple[Category, ...]:
    return tuple(Category(d["name"], d.get("color", "#e6194b"), tuple(d.get("keypoints", ())),
                          tuple(tuple(p) for p in d.get("skeleton", ()))) for d in dicts)


def save_checkpoint(path: str | os.PathLike, detector: Detector, **extra: Any) -> Path:
    """Write a plain-dict checkpoint atomically (weights, categories, config, versions, extras)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in _unwrap(detector.model).state_dict().items()}
    ckpt = {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
        "model": state,
        "categories": _category_dicts(detector.categories),
        "config": detector.config.to_dict(),
        "versions": {"torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
                     "python": platform.python_version()},
        **extra,
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint with ``weights_only=True``: a pickle that would run code is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # The weights-only unpickler says the same for junk bytes and for a pickle that would
        # run code; both are refused unread.
        raise CheckpointError(f"{path}: refused: not plain weights (a corrupt file, or objects that "
                              "could run code); not loaded") from exc
    except Exception as exc:  # junk bytes reach the unpickler's every error path (IndexError, KeyError, ...)
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt: {first})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a Loupe checkpoint (no '{CHECKPOINT_FORMAT}' marker)")
    if int(ckpt.get("version", 0)) > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: written by a newer Loupe (version {ckpt.get('version')})")
    for key in ("model", "categories", "config"):
        if key not in ckpt:
            raise CheckpointError(f"{path}: checkpoint lacks {key!r}")
    return ckpt


def checkpoint_meta(path: str | os.PathLike) -> dict:
    """A checkpoint's entries other than the weights and optimizer state, read without loading the
    weights into memory (memory-mapped; still ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # the full load (load_checkpoint) names the problem
        raise CheckpointError(f"{path}: not a readable checkpoint") from exc
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: not a Loupe checkpoint")
    return _meta(ckpt)


def _meta(ckpt: dict) -> dict:
    """A checkpoint's entries other than the weights and the optimizer's state."""
    return {k: v for k, v in ckpt.items() if k not in ("model", "optimizer", "scheduler", "scaler")}


def detector_from_checkpoint(ckpt: dict, categories: tuple[Category, ...] | None = None, *,
                             source: str = "checkpoint", config: ModelConfig | None = None,
                             strict_categories: bool = False) -> Detector:
    """Rebuild the model a checkpoint describes; with other categories, keep what fits.

    Predictor rows are carried over for categories (and keypoints) whose names match; the rest of
    the network keeps its weights. ``strict_categories`` refuses a category mismatch instead.
    """
    try:
        saved_cfg = ModelConfig.from_dict(ckpt["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: architecture options not understood ({exc})") from exc
    if config is not None and config.backbone != saved_cfg.backbone:
        raise CheckpointError(f"{source}: a {saved_cfg.backbone} checkpoint cannot start a "
                              f"{config.backbone} model")
    cfg = saved_cfg if config is None else config
    saved_cats = _categories_from(ckpt["categories"])
    mapped = ckpt.get("category_map") or {}
    if mapped and categories is not None:  # a COCO start: match rows by the project's names
        saved_cats = tuple(Category(mapped.get(c.name, c.name), c.color, c.keypoints, c.skeleton)
                           for c in saved_cats)
    cats = saved_cats if categories is None else tuple(categories)
    same = [(c.name, c.keypoints) for c in cats] == [(c.name, c.keypoints) for c in saved_cats]
    if not same and strict_categories:
        raise CheckpointError(f"{source}: made for categories {[c.name for c in saved_cats]}, "
                              f"the project has {[c.name for c in cats]}")
    nk = sum(len(c.keypoints) for c in cats)
    model = _architecture(len(cats) + 1, nk, cfg)
    state = ckpt["model"]
    if same:
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise CheckpointError(f"{source}: weights do not fit a {cfg.backbone} model "
                                  f"({str(exc).splitlines()[0][:160]})") from exc
        notice = f"Loaded {source}"
    else:
        stats = transfer_weights(model, state, class_rows_by_name(cats, ["__bg__"] + [c.name for c in saved_cats]),
                                 keypoint_rows_by_name(cats, saved_cats))
        if stats["loaded"] == 0:
            raise CheckpointError(f"{source}: no weights fit a {cfg.backbone} model")
        notice = (f"Loaded {source}; categories changed, class-specific layers rebuilt "
                  f"(kept rows for matching names)")
    return Detector(model, cats, cfg, notice, _meta(ckpt))
