"""The ``loupe`` command line. User mistakes print one line naming the file and the problem."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .errors import LoupeError
from .train_config import add_train_arguments

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


def cmd_train(args) -> int:
    import signal
    import threading
    import time

    # A time budget counts from here: a GPU host imported torch in 4 s one day and 7 s another,
    # and a budget counted after the imports saved the first model past its 30 s (bench/RESULTS.md)
    launched = time.perf_counter()

    from .domain import ImageStatus
    from .train_config import TrainConfig
    from .train_hooks import EvalHook
    from .training import train_project

    project = _project(args)
    try:
        cfg = TrainConfig.from_args(args)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    active = project.active_model()
    cfg = cfg.for_project(active.path if active is not None else None)
    cancel = threading.Event()
    # SIGTERM / Ctrl+C stop at the next step boundary, keeping a resumable checkpoint.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: cancel.set())
    if args.register and os.environ.get("RANK", "0") != "0":
        args.register = False  # under torchrun one rank registers the model
    evaluate = None
    if args.evaluate or args.register:
        compare = args.compare or (active.path if args.register and active is not None else None)
        evaluate = EvalHook(project, compare, device=args.device)
    reviewed_at_start = project.status_counts().get(ImageStatus.REVIEWED, 0)
    result = train_project(project, cfg, args.output, progress=not args.json_events,
                           json_events=args.json_events, cancel=cancel, hooks=[evaluate] if evaluate else [],
                           started=launched)
    summary = result.summary()
    if evaluate is not None and evaluate.metrics is not None:
        after, before = evaluate.metrics["after"], evaluate.metrics["before"]
        if not args.json_events:
            print(json.dumps(evaluate.metrics))
        if args.register:
            from .versions import REVIEWED_AT_TRAINING, register

            reg = register(project, Path(args.output).resolve(), after, before,
                           {**cfg.to_dict(), "command": "loupe train"}, result.images_seen)
            project.set_meta(REVIEWED_AT_TRAINING, str(reviewed_at_start))  # the app's auto-training counts from it
            summary["registered"] = {"version": reg.version.name, "active": reg.promoted,
                                     "ap": reg.ap, "before": reg.before}
            print(reg.text(then="`loupe predict` re-annotates the images not yet reviewed."),
                  file=sys.stderr if args.json_events else sys.stdout, flush=True)
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
    add_train_arguments(t)
    t.add_argument("--evaluate", action="store_true",
                   help="after training, COCO AP on the held-out reviewed images")
    t.add_argument("--register", action=argparse.BooleanOptionalAction, default=True,
                   help="add the model to the project's model versions and make it the active one if its "
                        "held-out AP is not worse than the active model's, as the app's Train button does "
                        "(implies --evaluate; default: on, rank 0 only under torchrun)")
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


WEIGHT_WORDS = ("coco", "none", "active")  # --weights values that are not files


def _check_weights_file(args) -> None:
    """A --weights file that is not there is said at once, before the ~7 s of importing torch."""
    value = getattr(args, "weights", None)
    if value and value not in WEIGHT_WORDS and not Path(value).exists():
        raise UserError(f"{value}: file not found")


def main(argv: list[str] | None = None) -> int:
    """Headless commands; ``app.main.run`` sends everything else to the GUI."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.command is None:
        build_parser().print_help()
        return 2
    try:
        _check_weights_file(args)
        return args.func(args)
    except LoupeError as exc:
        print(f"loupe {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"loupe {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
