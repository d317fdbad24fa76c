"""Human time saved: the labeling loop in rounds, priced by the simulated annotator.

Each round: pick K images from the pool (round 1 at random: there is no model yet; later rounds
in ``--order``: random, or least confident first by ``--measure``), "review" them (the
annotator corrects what the current model shows into the ground truth; its seconds are
priced by ``detector.annotator``), train with the app's defaults starting from the last model
(from random weights in round 1), and pre-annotate the rest. After each round the unseen test
images ("the next images") are priced: simulated seconds per image with Loupe's predictions and
box-prompted fill, against labeling from scratch, and their COCO AP. The confidence slider
follows each new model as in the app (``--slider auto``): the value its held-out images cost
least at; every round also prints the unseen images' seconds at each slider value, so the
held-out choice, the default 0.5 and the best value in hindsight compare within one run. The
Box tool's fill follows each model as in the app too: its masks stay among the fill's candidates
unless the classical cuts alone filled its held-out images' boxes for less
(``evaluation.fill_choice``; ``held_out_fill``, and ``test_fill`` on the unseen images for hindsight).
A missed object is clicked with the Click tool first and boxed where the click's result is wrong
(``detector.annotator``), as the app's slider pricing assumes; the click shows a prediction the
slider hides where the held-out images say that is cheaper than the grown region, as in the app
(``evaluation.slider_choice``; ``click_shows_hidden``). ``--no-click`` prices boxes only, and
every row also gives ``seconds_per_image_without_click`` (same model and slider, boxes only) and
``seconds_per_image_click_region_only`` / ``_click_shows_hidden`` (either way, the same slider).

    python bench/bench_annotator.py [--data demo|nuclei] [--order random|uncertainty]
                                    [--rounds 3] [--per-round K] [--budget-s S] [--slider auto|V]
                                    [--crop PX] [--model-option KEY=VALUE] [--quick] [--no-click]

Prints one JSON line per round and a final line with ``seconds_per_image_by_round``,
``manual_seconds_per_image`` (a polygon per object, as in a tool without assistance),
``no_model_seconds_per_image`` (Loupe before any model: a click or a box per object, the
classical cuts' fill corrected), ``ratio_after_last_round`` and ``order``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from detector import active  # noqa: E402
from detector import annotator as A  # noqa: E402
from detector.coco import import_coco, plan_import, read_json  # noqa: E402
from detector.domain import ImageRecord  # noqa: E402
from detector.evaluation import CocoEvaluator, fill_choice, slider_choice  # noqa: E402
from detector.images import load_image  # noqa: E402
from detector.inference import Predictor, load_detector, truth_click, truth_fill, truth_fills  # noqa: E402
from detector.model import load_checkpoint  # noqa: E402
from detector.store import Project  # noqa: E402
from detector.synthetic import generate  # noqa: E402
from detector.training import TrainConfig, train_project  # noqa: E402
from detector.train_config import parse_model_options  # noqa: E402

NUCLEI = ROOT.parent / "shared" / "data" / "nuclei"


def setup(args, tmp: Path) -> tuple[Path, Path, list[str], list[str]]:
    """(folder, ground truth file, pool image paths, test image paths)."""
    if args.data == "demo":
        n_pool, n_test = args.pool or 40, args.test or 20
        folder = tmp / "demo"
        gt = generate(folder, n_images=n_pool + n_test, seed=7, size=(320, 240))  # the app's demo scenes
        moved = tmp / "ground_truth.json"
        gt.rename(moved)
        names = sorted(Path(im["file_name"]).as_posix() for im in json.loads(moved.read_text())["images"])
        return folder, moved, names[:n_pool], names[n_pool:]
    source = Path(args.nuclei)
    data = json.loads((source / "annotations.json").read_text())
    folder = tmp / "nuclei"
    folder.mkdir()
    names = sorted(Path(im["file_name"]).name for im in data["images"])
    for name in names:
        (folder / name).symlink_to(source / "images" / name)
    for im in data["images"]:
        im["file_name"] = Path(im["file_name"]).name
    gt = tmp / "nuclei.json"
    gt.write_text(json.dumps(data))
    n_test = args.test or 38  # the README's fixed split: the last 38 unseen
    pool = names[: len(names) - n_test][: args.pool or None]
    return folder, gt, pool, names[len(names) - n_test:]


def subset(data: dict, paths: set[str]) -> dict:
    images = [im for im in data["images"] if im["file_name"] in paths]
    ids = {im["id"] for im in images}
    return {**data, "images": images, "annotations": [a for a in data["annotations"] if a["image_id"] in ids]}


class Session:
    """The current model over the project: predictions, box-prompted fill, costs, AP."""

    def __init__(self, project: Project, folder: Path, truth: dict, ckpt: str | None, device: str | None,
                 click: bool = True):
        self.folder, self.truth = folder, truth
        self.predictor = Predictor(load_detector(project, ckpt), device) if ckpt else None
        self.cache: dict[str, tuple] = {}
        self.fills: dict[str, tuple] = {}
        self.click = click  # the person uses the Click tool for missed objects
        self.show_hidden = True  # a click shows a prediction the slider hides (the app's choice per model)
        self.clicks: dict[str, object] = {}

    def click_for(self, path: str, click: bool | None = None):
        """The Click tool on this image (``detector.inference.truth_click``), None when not used."""
        if not (self.click if click is None else click):
            return None
        if path not in self.clicks:
            self.clicks[path] = truth_click(self.predictor, load_image(self.folder / path))
        return self.clicks[path]

    def predictions(self, path: str) -> tuple:
        if self.predictor is None:
            return ()
        if path not in self.cache:
            self.cache[path] = self.predictor.predict([load_image(self.folder / path)])[0]
        return self.cache[path]

    def fill_for(self, path: str):
        """The app's box fill for this image's ground-truth boxes: the model's second stage, or a
        classical cut where that fits the box better, and the classical cuts alone before any
        model or where the model's masks are off (``detector.inference.fill_boxes``, what the Box
        tool does)."""
        if self.predictor is None:
            if path not in self.fills:
                self.fills[path] = (truth_fill(None, load_image(self.folder / path), self.truth[path]),) * 2
            return self.fills[path][0]
        return self.fill_pair(path)[0 if self.predictor.model_masks else 1]

    def fill_pair(self, path: str) -> tuple:
        """(the fill with the model's masks among the candidates, with the cuts alone)."""
        if path not in self.fills:
            self.fills[path] = truth_fills(self.predictor, load_image(self.folder / path), self.truth[path])
        return self.fills[path]

    def fill_choice(self, paths: list[str]) -> dict:
        """``evaluation.fill_choice`` on these images (the app's rule for the model's masks)."""
        pairs = [self.fill_pair(p) for p in paths]
        return fill_choice([(self.truth[p], f[0]) for p, f in zip(paths, pairs)],
                           [(self.truth[p], f[1]) for p, f in zip(paths, pairs)])

    def cost(self, path: str, slider: float, click: bool | None = None, hidden: bool | None = None
             ) -> A.ImageCost:
        """Seconds to label ``path`` in Loupe: correct what the model shows; before any model, a
        click or a box per object, filled by the classical cuts. ``hidden`` (default: the
        session's ``show_hidden``): a click shows a prediction the slider hides where there is one."""
        shown = A.shown_at(self.predictions(path), slider) if self.predictor is not None else []
        hidden = self.show_hidden if hidden is None else hidden
        return A.review_cost(shown, self.truth[path], self.fill_for(path), click=self.click_for(path, click),
                             predictions=self.predictions(path) if hidden else ())

    def items(self, paths: list[str]) -> list[tuple]:
        return [(self.predictions(p), self.truth[p], self.fill_for(p), self.click_for(p)) for p in paths]

    def slider_costs(self, paths: list[str]) -> dict[float, float]:
        """Mean seconds an image at each slider value (``detector.annotator.slider_costs``)."""
        return A.slider_costs(self.items(paths), show_hidden=self.show_hidden)

    def metrics(self, paths: list[str]) -> dict:
        ev = CocoEvaluator(list({c.id: c for c in self.predictor.detector.categories}.values()))
        for p in paths:
            a = load_image(self.folder / p)
            ev.process(ImageRecord(p, a.shape[1], a.shape[0]),
                       self.truth[p], list(self.predictions(p)))
        return ev.evaluate()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=("demo", "nuclei"), default="demo")
    ap.add_argument("--nuclei", default=str(NUCLEI))
    ap.add_argument("--order", choices=("random", "uncertainty"), default="uncertainty")
    ap.add_argument("--measure", choices=active.MEASURES, default=active.DEFAULT_MEASURE)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--per-round", type=int, default=0, help="images reviewed a round (demo 8, nuclei 10)")
    ap.add_argument("--pool", type=int, default=0, help="images to pick from (demo 40; nuclei: all but the test)")
    ap.add_argument("--test", type=int, default=0, help="unseen images priced and scored (demo 20, nuclei 38)")
    ap.add_argument("--budget-s", type=float, default=0, help="training seconds a round (0: the app's default)")
    ap.add_argument("--steps", type=int, default=0,
                    help="training steps a round instead of a time budget: runs compare equally under any load")
    ap.add_argument("--slider", default="auto",
                    help="the confidence slider: 'auto' (the app's: after each round the value that costs "
                         "least on that run's held-out images, detector.annotator.best_slider; 0.5 before "
                         "the first model), or a fixed value such as 0.5 (the app's before that)")
    ap.add_argument("--crop", type=int, default=None,
                    help="train on random windows of this many pixels (0: whole images; default: the profile's)")
    ap.add_argument("--model-option", action="append", metavar="KEY=VALUE",
                    help="a model knob for every round, as `loupe train --model-option` (e.g. min_scale=0)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="demo, 3 rounds, 60 s of training a round, 12 test images")
    ap.add_argument("--no-click", action="store_true",
                    help="the person draws a box for every missed object (no Click tool), slider chosen so too")
    args = ap.parse_args()
    if args.quick:
        args.budget_s, args.test = args.budget_s or 60, args.test or 12
    k = args.per_round or (8 if args.data == "demo" else 10)
    slider = active.SLIDER if args.slider == "auto" else float(args.slider)
    rng = random.Random(args.seed)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        folder, gt_path, pool, test = setup(args, tmp)
        data = read_json(gt_path)
        project = Project(folder)
        project.scan()
        cats, planned, _, _ = plan_import(data, str(gt_path), folder)
        by_name = {}
        for c in {c.name: c for c in cats.values()}.values():
            by_name[c.name] = project.ensure_category(c)
        truth = {im.path: [i.with_(category_id=by_name[n].id) for n, i in im.instances] for im in planned.values()}
        manual = sum(A.manual_cost(truth[p]).seconds for p in test) / len(test)
        click = not args.no_click
        session = Session(project, folder, truth, None, args.device, click)
        # Before any model: a click (with the Click tool) or a box per object, filled by the
        # classical cuts (what the Box tool does).
        no_model = sum(session.cost(p, slider).seconds for p in test) / len(test)
        no_model_boxes = sum(session.cost(p, slider, click=False).seconds for p in test) / len(test)
        print(json.dumps({"data": args.data, "round": 0, "click": click, "seconds_per_image": round(no_model, 1),
                          "seconds_per_image_without_click": round(no_model_boxes, 1),
                          "manual_seconds_per_image": round(manual, 1)}), flush=True)
        ckpt, per_round, reviewed, review_s = None, [], [], 0.0
        for r in range(1, args.rounds + 1):
            left = [p for p in pool if p not in reviewed]
            if session.predictor is None or args.order == "random":
                chosen = rng.sample(left, min(k, len(left)))
            else:  # least confident first
                chosen = sorted(left, key=lambda p: -active.uncertainty(session.predictions(p), args.measure))[:k]
            review_s += sum(session.cost(p, slider).seconds for p in chosen)
            reviewed += chosen
            sub = tmp / f"round{r}.json"
            sub.write_text(json.dumps(subset(data, set(chosen))))
            import_coco(project, sub)
            out = tmp / f"round{r}.pt"
            cfg = TrainConfig(weights=ckpt or "none", device=args.device, seed=args.seed,
                              time_budget_s=args.budget_s or None, iterations=args.steps or None,
                              crop=args.crop, model_overrides=parse_model_options(args.model_option))
            t = time.perf_counter()
            result = train_project(project, cfg, out)
            train_s = time.perf_counter() - t
            ckpt = str(out)
            session = Session(project, folder, truth, ckpt, args.device, click)
            held = load_checkpoint(out).get("holdout", {}).get("images", [])
            held_fill = session.fill_choice(held)  # the app's rule: the model's masks fill boxes or not
            test_fill = session.fill_choice(test)
            session.predictor.model_masks = held_fill["model_masks"]
            held_choice = slider_choice(session.items(held))  # the app's rule: slider, and what a click shows
            session.show_hidden = held_choice["click_shows_hidden"] is not False
            held_costs = {float(s): c for s, c in held_choice["seconds_per_image"].items()}
            held_pick = held_choice["best"]
            if args.slider == "auto":
                slider = held_pick
            test_costs = session.slider_costs(test)
            costs = [session.cost(p, slider) for p in test]
            without_click = sum(session.cost(p, slider, click=False).seconds for p in test) / len(test)
            region_only = sum(session.cost(p, slider, hidden=False).seconds for p in test) / len(test)
            with_hidden = sum(session.cost(p, slider, hidden=True).seconds for p in test) / len(test)
            m = session.metrics(test)
            actions = sum((c.actions for c in costs), start=type(costs[0].actions)())
            row = {"round": r, "reviewed": len(reviewed), "steps": result.steps, "train_s": round(train_s, 1),
                   "seconds_per_image": round(sum(c.seconds for c in costs) / len(test), 1),
                   "seconds_per_image_without_click": round(without_click, 1),
                   "seconds_per_image_click_region_only": round(region_only, 1),
                   "seconds_per_image_click_shows_hidden": round(with_hidden, 1),
                   "slider": slider, "held_out_images": len(held), "held_out_pick": held_pick,
                   "click_shows_hidden": session.show_hidden if click else None,
                   "fill_model_masks": held_fill["model_masks"], "held_out_fill": held_fill, "test_fill": test_fill,
                   "test_best_slider": A.best_slider(test_costs),
                   "test_seconds_by_slider": {f"{s:.2f}": round(c, 1) for s, c in test_costs.items()},
                   "held_out_seconds_by_slider": {f"{s:.2f}": round(c, 1) for s, c in held_costs.items()},
                   "segm_AP": m["segm"]["AP"] if m.get("segm") else None,
                   "bbox_AP": m["bbox"]["AP"], "keypoint_AP": (m.get("keypoints") or {}).get("AP"),
                   "actions_per_image": {a: round(n / len(test), 2) for a, n in sorted(actions.items())}}
            per_round.append(row)
            print(json.dumps({"data": args.data, "order": args.order, **row}), flush=True)
        project.close()
    sec = [row["seconds_per_image"] for row in per_round]
    print(json.dumps({
        "data": args.data, "order": args.order, "measure": args.measure if args.order == "uncertainty" else None,
        "rounds": args.rounds, "per_round": k, "crop": args.crop, "model_options": args.model_option or [],
        "steps": args.steps or None, "budget_s": args.budget_s or None,
        "test_images": len(test), "slider": args.slider, "click": click,
        "slider_by_round": [row["slider"] for row in per_round],
        "reviewed_by_round": [row["reviewed"] for row in per_round],
        "seconds_per_image_by_round": sec, "manual_seconds_per_image": round(manual, 1),
        "no_model_seconds_per_image": round(no_model, 1),
        "ratio_after_last_round": round(sec[-1] / manual, 3),
        "segm_AP_by_round": [row["segm_AP"] for row in per_round],
        "bbox_AP_by_round": [row["bbox_AP"] for row in per_round],
        "keypoint_AP_by_round": [row["keypoint_AP"] for row in per_round],
        "review_seconds_spent": round(review_s, 1), "device": str(session.predictor.device),
        "elapsed_s": round(time.perf_counter() - t_start, 1)}), flush=True)


if __name__ == "__main__":
    main()
