"""The training vocabulary, written once: ``TrainConfig`` (the settings of one run), ``TrainEvent``
(what a run reports) and the options of ``loupe train``, which are generated from the config's
fields so a default or a name exists in one place.

Imports neither torch nor Qt: the window builds a ``TrainConfig`` before torch is loaded and hands
the child process ``cfg.to_argv()``; the child rebuilds it with ``TrainConfig.from_args``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from .training import Trainer

# Backbones by name, with the label the settings dialog shows; detector/model.py holds a builder
# for each (it checks at import that the two tables agree).
DEFAULT_BACKBONE = "resnet50_v2"  # torchvision's maskrcnn_resnet50_fpn_v2 layout: COCO weights load
LIGHT_BACKBONE = "resnet18"  # the CPU profile's
BACKBONES = {DEFAULT_BACKBONE: "ResNet-50 FPN v2", LIGHT_BACKBONE: "ResNet-18 FPN (light)"}
GPU_SIZE = 800  # the shorter side COCO models are trained at; the GPU profile's input size
CPU_MAX_SIZE = 512  # the CPU profile never scales an image's shorter side past this
OPTIMIZERS = ("sgd", "adamw")
PROFILES = ("auto", "gpu", "gpu-fast", "cpu-fast", "reference")
# A run with a time budget and a longer limit (time_budget_max_s) goes past the budget until it has
# made this many passes over the images: a first model of 8 demo images gets ~100 in its 150 s, one
# of 17 dense nuclei images 14, and was undertrained (bench/RESULTS.md).
BUDGET_EPOCHS = 40
WEIGHTS_HELP = "checkpoint file, 'coco', 'none' (random) or 'active' (the project's model, else coco)"


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run is asked for; ``None`` means "let the profile or the trainer
    choose" (detector.profiles, detector.training.with_start_defaults)."""

    weights: str | None = "coco"  # checkpoint path, "coco", "none" or "active"
    # With weights "coco" and the light backbone (ResNet-18): its trunk from torchvision's ImageNet
    # weights ("imagenet": the cache, else a download), from a file, or random ("none"); detector.trunk
    trunk: str = "imagenet"
    epochs: int | None = None
    iterations: int | None = None  # default: 20 epochs' worth, at least 100 steps
    batch_size: int | None = None  # None: the profile's
    lr: float | None = None  # default: see with_start_defaults
    optimizer: str | None = None  # "sgd" or "adamw"; default: AdamW from random weights, else SGD
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    clip_grad: float = 10.0
    device: str | None = None
    backbone: str | None = None  # default: the checkpoint's, else the profile's or resnet50_v2
    min_size: int | None = None  # None: the profile's
    max_size: int | None = None  # None: 5/3 of min_size
    trainable_layers: int | None = None  # backbone stages to train (0-5); default 3 from learned weights, 5 random
    augment: bool = True
    copy_paste: float = 0.0  # with augment: probability of pasting another image's objects
    keypoint_loss_weight: float | None = None  # of the keypoint loss in the total; None: 0.25 with AdamW, else 1
    classifier_loss_weight: float | None = None  # of the region classifier's loss; None: 2 with AdamW, else 1
    label_smoothing: float | None = None  # of the region classifier's targets; None: 0 (a resumed run's own)
    rotate: float = 0.0  # with augment: largest random rotation in degrees (half the images); 0: none
    # With augment: train on square windows of this many pixels at the model's scale instead of
    # whole images (detector.train_data); None: the profile's; 0: whole images
    crop: int | None = None
    ema: float = 0.0  # decay of a moving average of the weights, saved instead of the last ones; 0: off
    seed: int = 0
    holdout: float = 0.2
    resume: str | None = None
    extra_coco: str | None = None
    checkpoint_every: int = 0
    amp: bool = True
    model_overrides: dict = field(default_factory=dict)  # any ModelConfig field
    # Seconds the run may take, from train_project's start (the data and the model's set-up count):
    # after a few steps the step count is set to fit (at least MIN_BUDGET_STEPS, at most
    # ``iterations``). The fast profiles' way of sizing a first model.
    time_budget_s: float | None = None
    # When the budget leaves fewer than BUDGET_EPOCHS passes over the images (detector.training),
    # the run may go on to this many seconds: more reviewed images, a longer first model.
    time_budget_max_s: float | None = None
    freeze_bn: bool | None = None  # backbone BatchNorm keeps its statistics; None: yes from learned weights
    # On a CPU: the RPN and RoI heads take a step's images on this many threads at once (the
    # backbone takes the batch whole); None: one per image, up to the cores; 1: one thread.
    # A GPU, and DistributedDataParallel, always take the batch whole.
    step_threads: int | None = None
    # Processes that read, decode and augment the images (DataLoader workers); None: on a GPU one
    # per two cores up to 8 (one thread fed a GPU ~4 nuclei steps a second), on a CPU none (the
    # prefetch thread alone: the step needs the cores).
    data_workers: int | None = None
    profile: str = "auto"  # fills what is left None: see detector.profiles

    def windows(self) -> tuple[int, int, int] | None:
        """(window px, min_size, max_size) where the run trains on windows (crop set, smaller
        than the input size, with augment), else None."""
        s = self.min_size
        if not (self.augment and self.crop and s and self.crop < s):
            return None
        return self.crop, s, self.max_size or int(s * 5 / 3)

    def loss_weights(self) -> dict[str, float]:
        """Weights of torchvision's loss terms in the sum the model learns from (unnamed: 1)."""
        return {"loss_keypoint": 1.0 if self.keypoint_loss_weight is None else self.keypoint_loss_weight,
                "loss_classifier": 1.0 if self.classifier_loss_weight is None else self.classifier_loss_weight}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["model_overrides"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.model_overrides.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """The fields this version knows; anything else (a newer Loupe's) is left out."""
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        if "model_overrides" in kw:
            kw["model_overrides"] = {k: tuple(v) if isinstance(v, list) else v
                                     for k, v in (kw["model_overrides"] or {}).items()}
        return cls(**kw)

    def for_project(self, active: str | None) -> TrainConfig:
        """``weights="active"`` made concrete: the project's active model, else COCO. A backbone
        is a choice for new models only: a checkpoint brings its own."""
        from dataclasses import replace

        weights = (active or "coco") if self.weights == "active" else self.weights
        backbone = self.backbone if weights in (None, "coco", "none") else None
        return replace(self, weights=weights, backbone=backbone)

    def to_argv(self) -> list[str]:
        """The ``loupe train`` options that rebuild this config (defaults are left out). A field
        with no option (momentum, ...) set to other than its default is refused rather
        than dropped."""
        lost = [f.name for f in fields(self) if f.name not in _OPTION_FIELDS
                and getattr(self, f.name) != _default(f.name)]
        if lost:
            raise ValueError(f"no loupe train option carries {', '.join(lost)}")
        out: list[str] = []
        for opt in OPTIONS:
            value = getattr(self, opt.field)
            if value == _default(opt.field):
                continue
            if opt.kind == "off":
                out.append(opt.flag)
            elif opt.kind == "pairs":
                for key, v in value.items():
                    v = ",".join(str(x) for x in v) if isinstance(v, (tuple, list)) else str(v)
                    out += [opt.flag, f"{key}={v}"]
            else:
                out += [opt.flag, str(value)]
        return out

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> TrainConfig:
        kw: dict[str, Any] = {}
        for opt in OPTIONS:
            value = getattr(ns, opt.dest)
            if opt.kind == "off":
                kw[opt.field] = not value
            elif opt.kind == "pairs":
                kw[opt.field] = parse_model_options(value)
            else:
                kw[opt.field] = value
        return cls(**kw)


def _default(name: str) -> Any:
    f = TrainConfig.__dataclass_fields__[name]
    return f.default_factory() if f.default is MISSING else f.default


@dataclass(frozen=True)
class Option:
    field: str
    flag: str
    help: str
    kind: str = "value"  # value: --flag V; off: --flag sets the field False; pairs: KEY=VALUE, repeatable
    type: Any = str
    choices: tuple | None = None
    metavar: str | None = None

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


OPTIONS = (
    Option("weights", "--weights", WEIGHTS_HELP),
    Option("trunk", "--trunk", "a new light model's ResNet-18 trunk with --weights coco (the default; COCO's "
                               "weights fit ResNet-50 FPN v2 only; --weights none starts everything random, "
                               "a checkpoint keeps its own trunk): 'imagenet' (torchvision's ImageNet "
                               "weights from its cache, else downloaded; default), a file of them, or 'none' "
                               "(random)", metavar="imagenet|FILE|none"),
    Option("epochs", "--epochs", "passes over the reviewed images (or --iterations)", type=int),
    Option("iterations", "--iterations", "optimizer steps (default: the profile's, else 20 epochs, at "
                                         "least 100)", type=int),
    Option("device", "--device", "cpu, cuda, cuda:1, mps (default: the best available)"),
    Option("profile", "--profile", "what fills the settings left unset: auto picks cpu-fast on a CPU; "
                                   "on a GPU, gpu from learned weights, gpu-fast from random ones",
           choices=PROFILES),
    Option("batch_size", "--batch-size", "default: the profile's (gpu and gpu-fast 4, cpu-fast 2)", type=int),
    Option("lr", "--lr", "default: chosen from the optimizer, the batch size and whether the weights "
                         "start random", type=float),
    Option("optimizer", "--optimizer", "default: AdamW from random weights, SGD (torchvision's recipe) "
                                       "from learned ones", choices=OPTIMIZERS),
    Option("backbone", "--backbone", "default: the checkpoint's; else the profile's (resnet18 for "
                                     "cpu-fast and gpu-fast, unless COCO weights are cached)",
           choices=tuple(BACKBONES)),
    Option("min_size", "--image-size", f"shorter side the model sees; default: the profile's (gpu {GPU_SIZE}, "
                                       f"the fast ones: objects ~48 px, up to {CPU_MAX_SIZE} on a CPU, "
                                       f"{GPU_SIZE} on a GPU)", type=int),
    Option("seed", "--seed", "random seed (default %(default)s)", type=int),
    Option("holdout", "--holdout", "fraction of the reviewed images held out for evaluation "
                                   "(default %(default)s)", type=float),
    Option("amp", "--no-amp", "float32 throughout: no mixed precision on a GPU, no bfloat16 on a CPU "
                              "with AMX or AVX-512 BF16", kind="off"),
    Option("weight_decay", "--weight-decay", "weight decay of the optimizer (default %(default)s)", type=float,
           metavar="D"),
    Option("warmup_steps", "--warmup-steps", "linear learning-rate warm-up steps (default %(default)s, at "
                                             "most a fifth of the run)", type=int),
    Option("time_budget_s", "--time-budget", "fit the step count so the run (from the command's start: "
                                             "imports, reading the data, setting up the model, the steps; not a "
                                             "download of the weights it starts from) takes about S seconds "
                                             "(default: the profile's; cpu-fast 150, gpu-fast 26)",
           type=float, metavar="S"),
    Option("time_budget_max_s", "--time-budget-max", f"when the time budget leaves fewer than {BUDGET_EPOCHS} "
                                                     "passes over the reviewed images, go on up to S seconds (default: "
                                                     "the profile's; cpu-fast 270)", type=float, metavar="S"),
    Option("extra_coco", "--coco", "also train on this COCO file's images"),
    Option("resume", "--resume", "resume from this checkpoint"),
    Option("checkpoint_every", "--checkpoint-every", "also save a resumable checkpoint every N steps",
           type=int, metavar="N"),
    Option("trainable_layers", "--trainable-layers", "backbone stages to train (0-5)", type=int),
    Option("freeze_bn", "--freeze-bn", "the backbone's BatchNorm keeps its running statistics (default: yes "
                                       "from learned weights, and for an ImageNet trunk's; no from random ones)",
           type=lambda v: _yes_no(v, "--freeze-bn"), metavar="yes|no"),
    Option("augment", "--no-augment", "no flips, colour or scale jitter", kind="off"),
    Option("copy_paste", "--copy-paste", "probability that an image gets another reviewed image's objects "
                                         "pasted over it (Simple Copy-Paste; default %(default)s)",
           type=float, metavar="P"),
    Option("keypoint_loss_weight", "--keypoint-loss-weight",
           "weight of the keypoint loss in the sum the model learns from (default: 0.25 with AdamW, 1 with "
           "SGD)", type=float,
           metavar="W"),
    Option("classifier_loss_weight", "--classifier-loss-weight",
           "weight of the region classifier's loss in the sum the model learns from (default: 2 with "
           "AdamW, 1 with SGD)",
           type=float, metavar="W"),
    Option("label_smoothing", "--label-smoothing",
           "smooth the region classifier's targets by E (cross-entropy's label_smoothing, e.g. 0.1; "
           "default: 0)", type=float, metavar="E"),
    Option("rotate", "--rotate", "with augmentation, turn half the images by up to DEG degrees either way "
                                 "(masks, boxes and keypoints with them; default %(default)s)",
           type=float, metavar="DEG"),
    Option("crop", "--crop", "with augmentation, train on random square windows of PX pixels at the model's "
                             "scale instead of whole images (default: the profile's; cpu-fast 256 where the "
                             "images go in at 384 px or more; 0: whole images)", type=int, metavar="PX"),
    Option("ema", "--ema", "keep an exponential moving average of the weights with this decay per step "
                           "(e.g. 0.99) and save it instead of the last weights (default: off)",
           type=float, metavar="DECAY"),
    Option("step_threads", "--step-threads",
           "on a CPU, run the RPN and RoI heads of a step's images on N threads at once, each with its "
           "share of the cores (the backbone takes the batch whole; default: one per image, up to the "
           "cores; 1: off)",
           type=int, metavar="N"),
    Option("data_workers", "--data-workers",
           "processes that read and augment the images (default: on a GPU one per two cores, up to 8; "
           "on a CPU 0, a thread)", type=int, metavar="N"),
    Option("model_overrides", "--model-option", "a model knob, e.g. anchor_sizes=16,32,64,128,256 "
                                                "(repeatable)", kind="pairs", metavar="KEY=VALUE"),
)
_EXCLUSIVE = ("epochs", "iterations")
_OPTION_FIELDS = {opt.field for opt in OPTIONS}


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """``loupe train``'s run options, from OPTIONS (defaults from TrainConfig's fields)."""
    group = parser.add_mutually_exclusive_group()
    for opt in OPTIONS:
        target = group if opt.field in _EXCLUSIVE else parser
        if opt.kind == "off":
            target.add_argument(opt.flag, action="store_true", help=opt.help)
        elif opt.kind == "pairs":
            target.add_argument(opt.flag, action="append", metavar=opt.metavar, help=opt.help)
        else:
            target.add_argument(opt.flag, type=opt.type, default=_default(opt.field), choices=opt.choices,
                                metavar=opt.metavar, help=opt.help)


_FLAGS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


def _yes_no(value: str, what: str) -> bool:
    flag = _FLAGS.get(str(value).strip().lower())
    if flag is None:
        raise argparse.ArgumentTypeError(f"{what} takes yes or no, not {value!r}")
    return flag


def parse_model_options(pairs: list[str] | None) -> dict:
    """``KEY=VALUE`` pairs for ModelConfig fields (numbers, comma lists and true/false parsed)."""
    from .model import ModelConfig

    known = ModelConfig.__dataclass_fields__
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or key not in known:
            raise ValueError(f"--model-option {pair!r}: expected KEY=VALUE with KEY one of {', '.join(known)}")
        if isinstance(known[key].default, bool):
            flag = _FLAGS.get(value.strip().lower())
            if flag is None:
                raise ValueError(f"--model-option {pair!r}: {key} is true or false")
            out[key] = flag
            continue
        parts = [v for v in value.split(",") if v]
        try:
            nums = [float(v) if any(c in v for c in ".e") else int(v) for v in parts]
        except ValueError:
            out[key] = value
            continue
        out[key] = tuple(nums) if key in ("anchor_sizes", "aspect_ratios") else nums[0]
    return out


class EventKind(str, Enum):
    """What a TrainEvent reports; a str, so ``event.kind == "step"`` and JSON stay as they were."""

    PREPARE = "prepare"  # before the start: a download the run needs (step / total_steps: MB)
    START = "start"
    STEP = "step"
    CHECKPOINT = "checkpoint"
    EVAL = "eval"
    DONE = "done"
    CANCELLED = "cancelled"
    ERROR = "error"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class TrainEvent:
    """One progress report of a run (``loupe train --json-events`` prints one a line)."""

    kind: EventKind
    step: int = 0
    total_steps: int = 0
    epoch: int = 0
    lr: float = 0.0
    losses: dict[str, float] = field(default_factory=dict)
    images_per_s: float = 0.0
    message: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "kind", EventKind(self.kind))

    def to_json(self) -> str:
        d = asdict(self)
        d["kind"] = self.kind.value
        return json.dumps(d)

    @classmethod
    def from_json(cls, line: str) -> TrainEvent:
        """Raises ValueError for a line that is not an event (the closing summary is not)."""
        d = json.loads(line)
        if not isinstance(d, dict) or "kind" not in d:
            raise ValueError("not a training event")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


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
