"""Training profiles: the settings a one-click Train uses, chosen from the device and the data.

A profile fills only what the person left open (``None`` in ``TrainConfig``); anything set in the
training settings dialog or on the command line wins. The training dock and ``loupe train`` say
which profile runs and why. bench/RESULTS.md has the measurements behind each choice.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import torch

from .heads import scale_with_floor
from .train_config import BUDGET_EPOCHS, CPU_MAX_SIZE, GPU_SIZE, LIGHT_BACKBONE, PROFILES


@dataclass(frozen=True)
class Profile:
    name: str
    reason: str
    backbone: str | None = None  # None: the checkpoint's, or resnet50_v2
    min_size: int = CPU_MAX_SIZE
    batch_size: int = 2
    model_overrides: dict = field(default_factory=dict)
    iterations: int | None = None  # None: the trainer's (20 epochs, at least 100 steps)
    time_budget_s: float | None = None  # fit the step count to this many seconds (at most iterations)
    time_budget_max_s: float | None = None  # ... or up to this many while short of BUDGET_EPOCHS
    crop: int = 0  # train on square windows of this many px at the model's scale; 0: whole images


def _round32(v: float) -> int:
    return int(max(32, round(v / 32) * 32))


def short_side(sizes: list[tuple[int, int]]) -> int | None:
    """Median shorter side of the images, or None when no size is known."""
    sides = [min(w, h) for w, h in sizes if w and h]
    return int(statistics.median(sides)) if sides else None


OBJECT_PX = 48  # the median object's shorter side, in model-input pixels, that the fast profiles aim at


# On a CPU that trains in float32 (no bfloat16 in hardware: most laptops) a step is compute-bound
# and its cost follows the pixels: objects at ~32 px (the smallest anchor) there. bench/RESULTS.md
# ("A CPU without AMX") has the runs: the demo's first model kept its AP50 in ~60 % of the time.
FLOAT32_CPU_OBJECT_PX = 32

# cpu-fast trains on 256 px windows of images that go in at 384 px or more (the model still sees
# whole images when it predicts). A step's cost follows the pixels while the heads take at most 16
# positive regions an image, so on large images with many objects a whole image buys little more
# than a window: nuclei's first model made 2.7x the steps in the same time and rose from 0.21 to
# 0.34 unseen segm AP50 (bench/RESULTS.md, "Windows instead of whole images"). Smaller inputs (the
# demo's, objects scaled to ~32-48 px in 128-224 px) stay whole.
CROP_PX = 256
CROP_FROM_PX = 384


def fast_size(sizes: list[tuple[int, int]], objects: list[float], cap: int = CPU_MAX_SIZE,
              object_px: int = OBJECT_PX) -> int:
    """The model input's shorter side for the fast profiles: the image scaled so the median
    labelled object is about ``object_px`` pixels across (the smallest anchor is 32), between 128
    and ``cap`` (CPU_MAX_SIZE on a CPU, GPU_SIZE on a GPU).

    Scaling by the objects rather than the image holds on both kinds of data seen so far: the
    demo's shapes (~70 px in 240 px images) stay at ~224 px inputs instead of being upscaled to 512,
    while nuclei (~15 px) are enlarged up to the cap so they stay detectable.
    """
    side = short_side(sizes)
    if not side:
        return cap
    if objects:
        obj = statistics.median(objects)
        side = side * object_px / max(obj, 1.0)
    return int(min(cap, max(128, _round32(side))))


# What makes a fast profile fast (each halved or more a CPU step's time, bench/RESULTS.md): the
# light backbone with a narrower pyramid, fewer sampled regions and proposals.
LIGHT_OVERRIDES = {"box_batch_size_per_image": 64, "rpn_batch_size_per_image": 128,
                   "rpn_post_nms_top_n_train": 1000, "fpn_channels": 128}
# The gpu-fast run's time budget, counted from the `loupe train` command's start (importing torch,
# the GPU's start, reading the data and building the model are inside it), so the first model is
# saved within ~28 s of the Train button on any host. It counted from after the imports at 22 s:
# an H200 host that imported in ~4 s saved at 26.8-27.5 s (2026-11-27), one that took ~7 s at
# 30.1-32.6 s (2026-11-30); 26 s from the start gives both hosts about the steps they made then.
GPU_FAST_BUDGET_S = 26.0
# cpu-fast's run is 150 s, longer only while it has made fewer than BUDGET_EPOCHS passes over the
# reviewed images, and never past this: the limit for real data is 300 s. The demo's 8
# images get ~100 passes in 150 s and stop there; nuclei's 17 dense images got 14 passes, and going
# on (215-241 steps, 272-286 s) gave unseen segm AP50 0.301 / 0.300 / 0.298 against 0.208 / 0.221 /
# 0.221 at 150 s (seeds 0-2, bench/RESULTS.md). 270, not 280: the 300 s are the bench's, from
# launch to the saved model, and 280 gave 302-304 s when the budget still counted from after the
# imports (~10-20 s on a busy 2-core laptop); since it counts from the command's start, 270 leaves
# room for the step that crosses the limit (~3 s at 480 px), the deadline's 5 % and the save.
CPU_FAST_BUDGET_MAX_S = 270.0


# The floor on the resize factor (ModelConfig.min_scale) and the long side it allows, in multiples
# of the input size (512 px on a CPU: 2048).
FLOOR_MAX_SIDE = 4


def scale_floor(images: list[tuple[int, int, float]], min_size: int, max_size: int,
                object_px: int = OBJECT_PX) -> float:
    """A floor on the resize factor for images of different sizes, or 0.0 for none.

    ``images``: (width, height, median object's shorter side in pixels) of each reviewed image
    with objects. torchvision's rule gives every image the same shorter side, right where objects
    grow with the image (photos of one scene at two resolutions). Where they keep their size in
    pixels (microscopy, scans at one resolution) an image larger than the others shrinks more and
    its objects with it: nuclei's 1024 px images went in at half size, their ~16 px nuclei at 8 px,
    under the smallest anchor (32 px). So when a reviewed image larger than the median would have
    its objects shrunk under half of ``object_px`` (the size the profile aims at), every image is
    resized by at least the median image's factor: the larger ones keep the median's
    magnification (their long side at most FLOOR_MAX_SIDE x min_size) instead of shrinking.
    Images of one size (the demo, a camera's photos) are never changed by it. apply_profile asks
    where the run trains on windows, whose steps cost the same however large the images go in."""
    if not images:
        return 0.0
    floor = min_size / statistics.median(min(w, h) for w, h, _ in images)
    for w, h, obj in images:
        g = scale_with_floor(h, w, min_size, max_size)  # torchvision's factor
        if g < floor * 0.99 and obj * g < object_px / 2:
            return round(floor, 4)
    return 0.0


def choose(name: str, device: torch.device, sizes: list[tuple[int, int]],
           objects: list[float] | None = None, learned: bool = False, float32_cpu: bool = False) -> Profile:
    """The profile called ``name`` for images of ``sizes`` (w, h) whose labelled objects have
    shorter sides ``objects`` (pixels); ``float32_cpu``: the CPU trains in float32 (no bfloat16
    matrix units, or autocast turned off), so cpu-fast spends fewer pixels and an RPN without the
    stride-4 level. "auto" picks by the device and the start: a CPU always
    cpu-fast; a GPU the full model (gpu) when the run starts from ``learned`` weights (COCO's, or
    a checkpoint that does not go back to random weights), else gpu-fast. From random weights the
    full model was not useful in a GPU's first half-minute (ResNet-50 FPN v2 at 800 px, 100 steps
    on an H200: unseen segm AP50 0.16 on the demo, 0.07 on nuclei; bench/RESULTS.md), while the
    light model reached 0.52 on the demo in ~390 steps of batch 2 (a 2-core CPU) and 0.52-0.55 in
    300 steps of batch 4."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r} (known: {', '.join(PROFILES)})")
    if name == "auto":
        if device.type == "cpu":
            name = "cpu-fast"
        else:
            name = "gpu" if learned else "gpu-fast"
    if name == "gpu":
        return Profile("gpu", f"a GPU: the full model at COCO's {GPU_SIZE} px, batch 4, mixed precision",
                       backbone=None, min_size=GPU_SIZE, batch_size=4)
    if name == "reference":
        return Profile("reference", "as asked: torchvision's detection settings",
                       backbone=None, min_size=CPU_MAX_SIZE, batch_size=2)
    if name == "gpu-fast":
        size = fast_size(sizes, objects or [], GPU_SIZE)
        return Profile("gpu-fast", f"a GPU, no learned weights: a light model, objects scaled to ~{OBJECT_PX} px "
                                   f"(128-{GPU_SIZE} px), fewer sampled regions, a {GPU_FAST_BUDGET_S:.0f} s run",
                       backbone=LIGHT_BACKBONE, min_size=size, batch_size=4, iterations=1500,
                       time_budget_s=GPU_FAST_BUDGET_S, model_overrides=dict(LIGHT_OVERRIDES))
    # cpu-fast: the images' own size (never upscaled past CPU_MAX_SIZE), a light backbone, fewer
    # sampled regions per image; each halves or more of a CPU step's time (bench/RESULTS.md).
    obj_px = FLOAT32_CPU_OBJECT_PX if float32_cpu else OBJECT_PX
    size = fast_size(sizes, objects or [], CPU_MAX_SIZE, obj_px)
    kind = "a CPU in float32" if float32_cpu else "a CPU"
    rpn = ", proposals from strides 8-64" if float32_cpu else ""
    crop = CROP_PX if size >= CROP_FROM_PX else 0
    # (apply_profile appends the backbone, input size, batch and sampled regions, and the windows)
    return Profile("cpu-fast", f"{kind}: objects scaled to ~{obj_px} px (128-{CPU_MAX_SIZE} px){rpn}, a 150 s run "
                               f"(up to {CPU_FAST_BUDGET_MAX_S:.0f} s below {BUDGET_EPOCHS} passes)",
                   backbone=LIGHT_BACKBONE, min_size=size, batch_size=2, iterations=500, time_budget_s=150.0,
                   time_budget_max_s=CPU_FAST_BUDGET_MAX_S, crop=crop,
                   model_overrides={**LIGHT_OVERRIDES, **({"rpn_stride4": False} if float32_cpu else {})})
