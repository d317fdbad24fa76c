"""Changes to torchvision's RoI heads that keep its weights and state-dict keys: in training, the
keypoint head on keypoint categories' regions only and optional label smoothing for the region
classifier; layers kept in float32 under autocast, anchors made in float32, an RPN that can
skip the stride-4 level, and a transform that stretches dim images before the network."""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.roi_heads import RoIHeads, keypointrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.models.detection.transform import (GeneralizedRCNNTransform, _resize_image_and_masks,
                                                    resize_boxes, resize_keypoints)

from .domain import Category
from .images import stretch_bounds


def keypoint_slices(categories) -> dict[int, slice]:
    """Label index -> slice of the keypoint head's output belonging to that category."""
    out, start = {}, 0
    for i, c in enumerate(categories):
        if c.keypoints:
            out[i + 1] = slice(start, start + len(c.keypoints))
            start += len(c.keypoints)
    return out


class TrainingRoIHeads(RoIHeads):
    """torchvision's RoIHeads with two training-only changes (inference is torchvision's own):

    - the keypoint head sees only the positive regions of categories that have keypoints
      (torchvision feeds it every positive region). The loss is the same number: regions of
      other categories carry no visible keypoints, so ``keypointrcnn_loss`` ignores them. The
      work is not: the keypoint head's convolutions on every positive region were the largest
      single cost of a CPU training step on the demo. ``keypoint_labels`` (a tensor of model
      labels) is set by ``prepare_roi_heads``.
    - ``label_smoothing`` > 0: the region classifier's loss is cross-entropy against targets
      smoothed by that much (``torch.nn.functional.cross_entropy(label_smoothing=)``) instead of
      torchvision's hard targets.
    """

    keypoint_labels: torch.Tensor | None = None
    label_smoothing: float = 0.0
    # What one forward passes between its steps lives per thread, never on the module: a CPU
    # training step runs parts of its batch through this one module on several threads at once
    # (detector/training.py, step_threads).
    _local = threading.local()

    @property
    def keypoint_roi_pool(self):
        """torchvision's, or None while this thread's forward skips torchvision's keypoint branch."""
        return None if getattr(self._local, "skip_keypoints", False) else self._modules.get("keypoint_roi_pool")

    def select_training_samples(self, proposals, targets):
        out = super().select_training_samples(proposals, targets)
        self._local.samples = out
        return out

    def forward(self, features, proposals, image_shapes, targets=None):
        focus = self.has_keypoint() and self.keypoint_labels is not None
        if not (self.training and (focus or self.label_smoothing > 0)):
            return super().forward(features, proposals, image_shapes, targets)
        local = self._local
        local.skip_keypoints = focus  # torchvision skips its keypoint branch ...
        local.logits = [] if self.label_smoothing > 0 else None  # caught by _catch_logits
        try:
            result, losses = super().forward(features, proposals, image_shapes, targets)
            sampled, matched_idxs, labels, _ = local.samples
            logits = local.logits
        finally:
            local.skip_keypoints, local.logits, local.samples = False, None, None
        if self.label_smoothing > 0:
            losses["loss_classifier"] = F.cross_entropy(logits[0].float(), torch.cat(labels),
                                                        label_smoothing=self.label_smoothing)
        if not focus:
            return result, losses
        wanted = self.keypoint_labels.to(labels[0].device)  # ... and we run it on the regions that matter
        kp_boxes, kp_matched = [], []
        for boxes, matched, lab in zip(sampled, matched_idxs, labels):
            pos = torch.where(torch.isin(lab, wanted))[0]
            kp_boxes.append(boxes[pos])
            kp_matched.append(matched[pos])
        feats = self.keypoint_head(self.keypoint_roi_pool(features, kp_boxes, image_shapes))
        kp_logits = self.keypoint_predictor(feats)
        losses["loss_keypoint"] = keypointrcnn_loss(kp_logits, kp_boxes, [t["keypoints"] for t in targets],
                                                    kp_matched)
        return result, losses


def _catch_logits(module, inputs, output) -> None:
    """Forward hook on the box predictor: the class scores, for the thread whose forward asked."""
    caught = getattr(TrainingRoIHeads._local, "logits", None)
    if caught is not None:
        caught.append(output[0])


def prepare_roi_heads(model: MaskRCNN, categories: tuple[Category, ...], label_smoothing: float = 0.0) -> None:
    """Switch the model's RoI heads to TrainingRoIHeads: same state, no copy of the weights."""
    rh = model.roi_heads
    rh.__class__ = TrainingRoIHeads
    rh.label_smoothing = float(label_smoothing)
    hooks = rh.box_predictor._forward_hooks
    if label_smoothing > 0 and _catch_logits not in hooks.values():
        rh.box_predictor.register_forward_hook(_catch_logits)
    if rh.has_keypoint():
        rh.keypoint_labels = torch.tensor(sorted(keypoint_slices(categories)), dtype=torch.int64)


_FLOAT32_CLASSES: dict[type, type] = {}


def _float32_forward(self, *args, **kwargs):
    """The module's own forward in float32, with autocast off for it (see in_float32)."""
    dev = next((a.device.type for a in args if isinstance(a, torch.Tensor)), "cpu")
    args = tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
    with torch.autocast(dev, enabled=False):
        return super(type(self), self).forward(*args, **kwargs)


def in_float32(module: nn.Module) -> nn.Module:
    """Make ``module`` compute in float32 even under autocast; same weights and state-dict keys.

    For the layers whose outputs become coordinates (box deltas decoded against anchors and
    proposals) or rankings (objectness, class scores): bfloat16 keeps 8 bits of mantissa, so a
    box corner near x=400 would be rounded to 2 px. These are 1x1 convolutions and small linear
    layers, so float32 costs next to nothing.
    """
    cls = type(module)
    if cls not in _FLOAT32_CLASSES.values():
        if cls not in _FLOAT32_CLASSES:
            _FLOAT32_CLASSES[cls] = type(f"Float32{cls.__name__}", (cls,), {"forward": _float32_forward})
        module.__class__ = _FLOAT32_CLASSES[cls]
    return module


class Float32Anchors(AnchorGenerator):
    """torchvision's anchor generator, making the anchors in float32 whatever the features' dtype.

    torchvision makes them in the feature maps' dtype: under bfloat16 autocast (a GPU's, or a CPU's
    with AMX or AVX-512 BF16) an anchor corner above x=256 is rounded to a multiple of 2 px, above
    512 of 4 px and above 1024 (an 800 px input's long side) of 8 px, so a 32 px anchor's box, its
    IoU with the objects and the regression targets measured from it are off by up to a quarter of
    its size. No weights: the same state dict as torchvision's.
    """

    def forward(self, image_list, feature_maps):
        # only the maps' shapes, dtype and device are read: stand-ins with no storage of their own
        shapes = [torch.empty((), dtype=torch.float32, device=f.device).expand(f.shape) for f in feature_maps]
        return super().forward(image_list, shapes)


class CoarseRPN(RegionProposalNetwork):
    """torchvision's RPN over every pyramid level but the finest (stride 4): the same head and
    weights, anchors from the next level up (strides 8-64). The RoI heads still pool from stride 4.

    The stride-4 map holds three quarters of the pyramid's positions, so its share of the RPN's
    3x3 convolution, objectness ranking and anchor matching goes with it.
    """

    def forward(self, images, features, targets=None):
        first = next(iter(features))
        return super().forward(images, OrderedDict((k, v) for k, v in features.items() if k != first), targets)


def stretch_dim(image: torch.Tensor) -> torch.Tensor:
    """``image`` (C x H x W, float in [0, 1]) stretched as ``detector.images.stretch_contrast``
    stretches an 8-bit image for the screen, by the same rule (``stretch_bounds``): when its values,
    the darkest and brightest 0.2 % left out, span fewer than half of 256 levels, they are mapped
    linearly onto 0-1; otherwise ``image`` itself is returned."""
    with torch.no_grad():
        counts = torch.histc(image.detach().float(), bins=256, min=0.0, max=1.0)
    bounds = stretch_bounds(counts.cpu().numpy())
    if bounds is None:
        return image
    lo, hi = bounds
    return ((image - lo / 255.0) * (255.0 / (hi - lo))).clamp(0.0, 1.0)


class StretchingTransform(GeneralizedRCNNTransform):
    """torchvision's transform; with ``stretch_dim`` set, each dim image is first stretched to the
    full range (the function ``stretch_dim``). Dim fluorescence images (59 of the 98 nuclei
    images: nuclei at 10-40 of 255) reach the network with the contrast photos have; photos and
    the synthetic scenes pass unchanged. A model's own setting (``ModelConfig.stretch_dim``), so
    it sees the same kind of input in training and in use."""

    stretch_dim: bool = False
    # With min_scale > 0 (ModelConfig.min_scale) an image is resized by at least that factor, its
    # long side at most max_size; base_size is the model's min_size (training's scale jitter draws
    # min_size from around it and scales the floor alike).
    min_scale: float = 0.0
    base_size: int = 0

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        return super().normalize(stretch_dim(image) if self.stretch_dim else image)

    def resize(self, image: torch.Tensor, target: dict | None = None):
        if not self.min_scale or (self.training and self._skip_resize):
            return super().resize(image, target)
        h, w = image.shape[-2:]
        size = self.torch_choice(self.min_size) if self.training else self.min_size[-1]
        base = self.base_size or size
        g = scale_with_floor(h, w, base, self.max_size, self.min_scale) * size / base
        # torchvision's resize with both limits at this factor: min(g * short / short, ...) = g
        image, target = _resize_image_and_masks(image, g * min(h, w), g * max(h, w) + 1, target, None)
        if target is None:
            return image, target
        target["boxes"] = resize_boxes(target["boxes"], (h, w), image.shape[-2:])
        if "keypoints" in target:
            target["keypoints"] = resize_keypoints(target["keypoints"], (h, w), image.shape[-2:])
        return image, target


def scale_with_floor(h: int, w: int, min_size: float, max_size: float, floor: float = 0.0) -> float:
    """The factor an h x w image is resized by: torchvision's (the shorter side to min_size, the
    longer at most max_size), raised to ``floor`` where that is larger, the longer side still at
    most max_size."""
    g = min(min_size / min(h, w), max_size / max(h, w))
    return min(max(g, floor), max_size / max(h, w)) if floor else g
