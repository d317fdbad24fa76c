"""ImageNet weights for the light model's trunk (ResNet-18), where torchvision keeps them.

torchvision's detection builders start every backbone from ImageNet weights unless told not to,
and so does the reference recipe: a detector trained from random weights catches up with one
whose trunk saw ImageNet only on long schedules and plenty of data (He, Girshick and Dollar,
"Rethinking ImageNet Pre-training", 2019), and a first model trained on a few reviewed images is
the opposite of both. The light model (cpu-fast, gpu-fast) therefore starts its trunk from
torchvision's ResNet-18 ImageNet weights when they can be had: torchvision's cache, a download
into it (45 MB, hash-checked), or a file the person names (``loupe train --trunk FILE``). The
pyramid and the heads start from random weights either way. Without the file the run starts from
random weights, as before, and its notice says which file to fetch and where to put it.

``LOUPE_OFFLINE=1`` keeps every download from being tried (the test suite sets it;
``pretrained.cached``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet18_Weights


TRUNK_WEIGHTS = ResNet18_Weights.IMAGENET1K_V1
TRUNK_MB = 45
IMAGENET = "imagenet"  # TrainConfig.trunk: torchvision's file (cache, else a download)
NO_TRUNK = "none"  # random weights for the trunk too


def trunk_cache_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(TRUNK_WEIGHTS.url)


def trunk_help() -> str:
    """What a person without the file fetches, and where it goes."""
    return (f"for a better first model, download {TRUNK_WEIGHTS.url} ({TRUNK_MB} MB) and copy it, "
            f"name unchanged, to {trunk_cache_path()}")


def trunk_state_dict(source: str, *, progress: Callable[[str, int, int], None] | None = None,
                     cancel: threading.Event | None = None) -> tuple[dict[str, torch.Tensor] | None, str]:
    """(ResNet-18 weights, where they came from) for ``source`` ("imagenet" or a file path), or
    (None, why not) when they cannot be had. A corrupt, partial or foreign file is refused, never
    loaded; the reason names the file and the problem. ``progress(file name, bytes done, bytes in
    all)`` and ``cancel`` reach the download (``pretrained.download``), if one is needed."""
    from .pretrained import WeightsError, cached, read_tensors  # it imports the model

    if source == NO_TRUNK:
        return None, "random trunk weights, as asked"
    try:
        path = cached(TRUNK_WEIGHTS.url, trunk_cache_path(), offline_text=trunk_help().capitalize(),
                      progress=progress, cancel=cancel) if source == IMAGENET else Path(source)
    except WeightsError as exc:
        return None, f"no ImageNet weights for the ResNet-18 trunk: {exc}; {trunk_help()}"
    try:
        sd = read_tensors(path)
    except WeightsError as exc:
        return None, str(exc)
    wanted = _trunk_shapes()
    if any(k not in sd or tuple(sd[k].shape) != s for k, s in wanted.items()):
        return None, f"{path}: not a torchvision ResNet-18 state dict (its layers' names or shapes differ)"
    where = "torchvision's ImageNet weights" if source == IMAGENET else str(path)
    return {k: sd[k] for k in wanted}, where


def _trunk_shapes() -> dict[str, tuple[int, ...]]:
    """Names and shapes of what the detector's trunk takes from a ResNet-18 state dict (its
    classifier, ``fc``, is not part of a detector; BatchNorm's ``num_batches_tracked`` is left to
    the module, older files have none)."""
    from torchvision.models import resnet18

    body = resnet18()
    return {k: tuple(v.shape) for k, v in body.state_dict().items()
            if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}


def load_trunk(body: nn.Module, sd: dict[str, torch.Tensor]) -> None:
    """Copy ResNet-18 weights into a detector's trunk (``model.backbone.body``)."""
    missing, unexpected = body.load_state_dict(sd, strict=False)
    left = [k for k in missing if not k.endswith("num_batches_tracked")]
    if left or unexpected:
        raise ValueError(f"the trunk does not take these weights: missing {left[:3]}, unexpected {unexpected[:3]}")
