"""The ``loupe`` command line. User mistakes print one line naming the file and the problem."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import LoupeError

COMMANDS = ("demo", "import", "export", "predict", "rank", "train", "evaluate")
# detector.formats' registry, named here so that building the parser imports nothing heavy
# (tests/test_formats.py checks the two agree)
IMPORT_FORMATS = ("coco", "yolo", "voc", "labelme", "results")
EXPORT_FORMATS = ("coco", "yolo", "voc", "labelme")


class UserError(LoupeError):
    """A mistake the user can fix; printed as one line, exit status 2."""


def _project(args):
    from .store import Project, ProjectError

    folder = Path(args.folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder")
    try:
        project = Project(folder, args.project)
    except ProjectError as exc:
        raise UserError(str(exc)) from exc
    project.scan()
    return project


def cmd_demo(args) -> int:
    from .synthetic import generate

    gt = generate(args.dir, n_images=args.images, seed=args.seed,
                  size=(args.width, args.height))
    print(f"wrote {args.images} images and {gt}")
    return 0


def cmd_import(args) -> int:
    from .formats import import_file

    project = _project(args)
    print(import_file(project, args.coco_json, args.format, gt=args.gt))
    return 0


def cmd_export(args) -> int:
    from .formats import export_file

    project = _project(args)
    options = {"reviewed_only": args.reviewed_only}
    if args.format == "coco":
        options["polygons"] = args.polygons
    elif args.polygons:
        raise UserError("--polygons is for --format coco (YOLO segment and labelme write polygons anyway)")
    if args.format == "yolo" and args.yolo_task:
        options["task"] = args.yolo_task
    print(export_file(project, args.output, args.format, **options))
    return 0


def cmd_predict(args) -> int:
    from .inference import predict_project

    project = _project(args)
    device = args.device
    if args.distributed and device in (None, "cuda"):
        import os

        import torch

        if torch.cuda.is_available():  # one GPU per rank, as torchrun numbers them
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}"
    summary = predict_project(project, weights=args.weights, device=device,
                              batch_size=args.batch_size, progress=True, channels_last=args.channels_last,
                              shard=_shard_from_env() if args.distributed else None, again=args.again)
    from .active import rank

    summary["most_unsure_first"] = [path for path, _ in rank(project)[:10]]  # all of them: loupe rank
    print(json.dumps(summary))
    return 0


def cmd_rank(args) -> int:
    from .active import rank

    project = _project(args)
    rows = rank(project, args.measure)
    if args.top:
        rows = rows[: args.top]
    lines = [f"{value:.4f}\t{path}" for path, value in rows]
    if args.output:
        Path(args.output).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        print(f"{len(lines)} images, most unsure first ({args.measure}) -> {args.output}")
    else:
        print("\n".join(lines))
    return 0


def _model_options(pairs: list[str]) -> dict:
    """``KEY=VALUE`` pairs for ModelConfig fields (numbers and comma lists parsed)."""
    from .model import ModelConfig

    known = ModelConfig.__dataclass_fields__
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or key not in known:
            raise UserError(f"--model-option {pair!r}: expected KEY=VALUE with KEY one of "
                            f"{', '.join(known)}")
        parts = [v for v in value.split(",") if v]
        try:
            nums = [float(v) if any(c in v for c in ".e") else int(v) for v in parts]
        except ValueError:
            out[key] = value
            continue
        out[key] = tuple(nums) if key in ("anchor_sizes", "aspect_ratios") else nums[0]
    return out


def cmd_train(args) -> int:
    import signal
    import threading

    from .training import TrainConfig, TrainEvent, train_project

    project = _project(args)
    cfg = TrainConfig(
        weights=args.weights, epochs=args.epochs, iterations=args.iterations,
        batch_size=args.batch_size, lr=args.lr, device=args.device, backbone=args.backbone,
        min_size=args.image_size, profile=args.profile,
        seed=args.seed, holdout=args.holdout, resume=args.resume, extra_coco=args.coco,
        checkpoint_every=args.checkpoint_every, optimizer=args.optimizer,
        trainable_layers=args.trainable_layers, augment=not args.no_augment,
        time_budget_s=args.time_budget, amp=not args.no_amp,
        **({"warmup_steps": args.warmup_steps} if args.warmup_steps is not None else {}),
        model_overrides=_model_options(args.model_option))
    cancel = threading.Event()
    # SIGTERM / Ctrl+C stop at the next step boundary, keeping a resumable checkpoint.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: cancel.set())
    result = train_project(project, cfg, args.output, progress=not args.json_events,
                           json_events=args.json_events, cancel=cancel)
    summary = result.summary()
    if result.ok and (args.evaluate or args.register):
        from .evaluation import evaluate_project
        from .model import load_checkpoint

        active = project.active_model()
        compare = args.compare or (active.path if args.register and active is not None else None)
        held = load_checkpoint(args.output).get("holdout", {}).get("images", [])
        records = [r for r in (project.image_by_path(p) for p in held) if r is not None]
        after = evaluate_project(project, args.output, records=records, device=args.device)
        before = evaluate_project(project, compare, records=records, device=args.device) if compare else None
        ev = TrainEvent("eval", result.steps, result.steps, metrics={"after": after, "before": before})
        if args.json_events:
            print(ev.to_json(), flush=True)
        else:
            print(json.dumps(ev.metrics))
        if args.register:
            from .versions import register

            settings = {k: v for k, v in vars(args).items() if k != "func" and isinstance(v, (str, int, float, bool))}
            reg = register(project, Path(args.output).resolve(), after, before,
                           {**settings, "command": "loupe train"}, result.images_seen)
            summary["registered"] = {"version": reg.version.name, "active": reg.promoted,
                                     "ap": reg.ap, "before": reg.before}
    print(json.dumps(summary), flush=True)
    return 0 if result.ok or result.cancelled else 1


def cmd_evaluate(args) -> int:
    from .evaluation import evaluate_project

    project = _project(args)
    metrics = evaluate_project(project, args.weights, gt=args.gt, device=args.device)
    print(json.dumps(metrics))
    return 0


def _shard_from_env():
    import os

    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return (rank, world)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="loupe", description="Assisted image labeling with Mask R-CNN.")
    sub = p.add_subparsers(dest="command")

    d = sub.add_parser("demo", help="write a synthetic folder and DIR/ground_truth.json")
    d.add_argument("dir")
    d.add_argument("--images", type=int, default=24)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--width", type=int, default=192)
    d.add_argument("--height", type=int, default=144)
    d.set_defaults(func=cmd_demo)

    def folder_args(sp):
        sp.add_argument("folder")
        sp.add_argument("--project", metavar="P", help="project database (for read-only folders)")

    i = sub.add_parser("import", help="import annotations (COCO, YOLO, VOC, labelme) or COCO results, all or nothing")
    folder_args(i)
    i.add_argument("coco_json", metavar="FILE", help="a file, or a folder for YOLO / VOC / labelme")
    i.add_argument("--format", choices=IMPORT_FORMATS, default=None,
                   help="default: recognised from the file (COCO when unsure)")
    i.add_argument("--gt", default=None, metavar="DATASET",
                   help="for results: the COCO dataset file their image and category ids refer to")
    i.set_defaults(func=cmd_import)

    e = sub.add_parser("export", help="export the project (COCO JSON by default)")
    folder_args(e)
    e.add_argument("-o", "--output", required=True, help="a file for COCO, a folder for YOLO / VOC / labelme")
    e.add_argument("--format", choices=EXPORT_FORMATS, default="coco")
    e.add_argument("--polygons", action="store_true", help="COCO masks as polygons instead of RLE")
    e.add_argument("--yolo-task", choices=("detect", "segment", "pose"), default=None,
                   help="default: pose with keypoint categories, else segment")
    e.add_argument("--reviewed-only", action="store_true")
    e.set_defaults(func=cmd_export)

    pr = sub.add_parser("predict", help="pre-annotate every image not yet reviewed")
    folder_args(pr)
    pr.add_argument("--weights", default=None, help="checkpoint file, 'coco', or 'active' (default)")
    pr.add_argument("--device", default=None)
    pr.add_argument("--batch-size", type=int, default=None, help="default: 4 on a GPU, 1 on a CPU")
    pr.add_argument("--channels-last", action="store_true",
                    help="NHWC convolutions on a GPU (bench/bench_predict.py measures whether it helps)")
    pr.add_argument("--distributed", action="store_true",
                    help="take this rank's share of the images (set by torchrun)")
    pr.add_argument("--again", action="store_true",
                    help="predict again the images this model already did (by default a run "
                         "resumes where an interrupted one stopped)")
    pr.set_defaults(func=cmd_predict)

    rk = sub.add_parser("rank", help="predicted images not yet reviewed, the model's least confident "
                                     "first (uncertainty<TAB>path per line)")
    folder_args(rk)
    rk.add_argument("--measure", choices=("entropy", "near-slider", "mean-entropy"), default="entropy",
                    help="entropy (stored with each prediction, the default), near-slider or mean-entropy")
    rk.add_argument("--top", type=int, default=0, help="only the first N")
    rk.add_argument("-o", "--output", default=None, help="write the list to a file")
    rk.set_defaults(func=cmd_rank)

    t = sub.add_parser("train", help="fine-tune on the reviewed images")
    folder_args(t)
    t.add_argument("--weights", default="coco", help="checkpoint file, 'coco' or 'none'")
    g = t.add_mutually_exclusive_group()
    g.add_argument("--epochs", type=int, default=None)
    g.add_argument("--iterations", type=int, default=None)
    t.add_argument("--device", default=None)
    t.add_argument("--profile", choices=("auto", "gpu", "cpu-fast", "reference"), default="auto",
                   help="what fills the settings left unset: auto picks gpu or cpu-fast by device")
    t.add_argument("--batch-size", type=int, default=None, help="default: the profile's (gpu 4, cpu 2)")
    t.add_argument("--lr", type=float, default=None, help="default: chosen from the optimizer, "
                   "the batch size and whether the weights start random")
    t.add_argument("--optimizer", choices=("sgd", "adamw"), default=None,
                   help="default: AdamW from random weights, SGD (torchvision's recipe) from learned ones")
    t.add_argument("--backbone", choices=("resnet50_v2", "resnet18"), default=None,
                   help="default: the checkpoint's; else the profile's (resnet18 on a CPU unless COCO weights are cached)")
    t.add_argument("--image-size", type=int, default=None,
                   help="shorter side the model sees; default: the profile's (gpu 800, cpu the images' own up to 512)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--holdout", type=float, default=0.2)
    t.add_argument("--no-amp", action="store_true",
                   help="float32 throughout: no mixed precision on a GPU, no bfloat16 on a CPU with AMX")
    t.add_argument("--warmup-steps", type=int, default=None,
                   help="linear learning-rate warm-up steps (default 50, at most a fifth of the run)")
    t.add_argument("--time-budget", type=float, default=None, metavar="S",
                   help="fit the step count to about S seconds of training (default: the profile's; "
                        "cpu-fast 150)")
    t.add_argument("--coco", default=None, help="also train on this COCO file's images")
    t.add_argument("--resume", default=None, help="resume from this checkpoint")
    t.add_argument("--checkpoint-every", type=int, default=0)
    t.add_argument("--trainable-layers", type=int, default=None, help="backbone stages to train (0-5)")
    t.add_argument("--no-augment", action="store_true", help="no flips, colour or scale jitter")
    t.add_argument("--model-option", action="append", metavar="KEY=VALUE",
                   help="a model knob, e.g. anchor_sizes=16,32,64,128,256 (repeatable)")
    t.add_argument("--evaluate", action="store_true",
                   help="after training, COCO AP on the held-out reviewed images")
    t.add_argument("--register", action="store_true",
                   help="add the model to the project's versions and make it active if its held-out AP "
                        "is not worse than the active model's (the app's rule; implies --evaluate)")
    t.add_argument("--compare", default=None, metavar="W",
                   help="with --evaluate, also score this checkpoint on the same images")
    t.add_argument("--json-events", action="store_true", help="stream progress as JSON lines")
    t.add_argument("-o", "--output", required=True)
    t.set_defaults(func=cmd_train)

    ev = sub.add_parser("evaluate", help="COCO AP of a checkpoint on held-out or given images")
    folder_args(ev)
    ev.add_argument("--weights", required=True)
    ev.add_argument("--gt", default=None, help="ground-truth COCO file")
    ev.add_argument("--device", default=None)
    ev.set_defaults(func=cmd_evaluate)
    return p


def main(argv: list[str] | None = None) -> int:
    """Headless commands; ``app.launcher`` sends everything else to the GUI."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.command is None:
        build_parser().print_help()
        return 2
    try:
        return args.func(args)
    except LoupeError as exc:
        print(f"loupe {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"loupe {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
