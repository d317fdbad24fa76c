"""First useful model: the Train button's code path, wall-clock from start to a saved model.

The app's one-click Train runs ``loupe train FOLDER --json-events --evaluate`` in a child process
with the settings left to the profile (detector/profiles.py); this bench starts exactly that
command and times it from launch to the ``done`` event (the checkpoint is written then), then
scores the model on images nobody reviewed.

- demo: the app's demo folder (40 synthetic 320 x 240 scenes, the first 10 reviewed); unseen =
  the 30 others.
- nuclei: the real microscopy images in ../shared/data/nuclei, sorted by file name, the first 20
  reviewed (imported from ground truth), the last 38 unseen (evaluated with enough detections
  per image for the densest, see evaluation.py).

Prints one JSON line per data set with ``train_s``, ``unseen_segm_AP50``, ``device``, ``profile``,
and ``download_s``: the part of ``train_s`` spent downloading the weights the run starts from
(a first run with internet; 0 once they are in torchvision's cache).

    python bench/bench_first_model.py [--datasets demo,nuclei] [--nuclei DIR] [--device cuda]
                                      [--smoke] [-- extra `loupe train` arguments]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from detector.coco import import_coco, plan_import, read_json  # noqa: E402
from detector.domain import ImageRecord  # noqa: E402
from detector.evaluation import evaluate_detector  # noqa: E402
from detector.inference import load_detector  # noqa: E402
from detector.model import load_checkpoint  # noqa: E402
from detector.store import Project  # noqa: E402
from detector.synthetic import make_demo  # noqa: E402


def _subset(data: dict, names: set[str]) -> dict:
    images = [im for im in data["images"] if Path(im["file_name"]).name in names]
    ids = {im["id"] for im in images}
    return {**data, "images": images, "annotations": [a for a in data["annotations"] if a["image_id"] in ids]}


def setup_demo(tmp: Path, smoke: bool) -> tuple[Path, Path]:
    """(images folder, ground truth of the unseen images)."""
    n, reviewed = (8, 4) if smoke else (40, 10)
    folder = make_demo(tmp / "demo", n_images=n, reviewed=reviewed)
    data = json.loads((tmp / "demo" / "ground_truth.json").read_text())
    unseen = {Path(im["file_name"]).name for im in data["images"][reviewed:]}
    gt = tmp / "demo_unseen.json"
    gt.write_text(json.dumps(_subset(data, unseen)))
    return folder, gt


def setup_nuclei(tmp: Path, source: Path, smoke: bool) -> tuple[Path, Path]:
    n_rev, n_unseen = (3, 3) if smoke else (20, 38)
    data = json.loads((source / "annotations.json").read_text())
    names = sorted(Path(im["file_name"]).name for im in data["images"])
    reviewed, unseen = names[:n_rev], names[len(names) - n_unseen:]
    folder = tmp / "nuclei"
    folder.mkdir()
    for name in reviewed + unseen:
        shutil.copyfile(source / "images" / name, folder / name)
    # file names in the source are "images/x.png"; import looks them up by name under the root
    starter, gt = tmp / "nuclei_reviewed.json", tmp / "nuclei_unseen.json"
    starter.write_text(json.dumps(_subset(data, set(reviewed))))
    gt.write_text(json.dumps(_subset(data, set(unseen))))
    with Project(folder) as project:
        project.scan()
        import_coco(project, starter)
    return folder, gt


T0 = time.perf_counter()


def progress(text: str) -> None:
    """One timed line on stderr, so a run cut off by a lease's limit says where it was."""
    print(f"[{time.perf_counter() - T0:7.1f} s] {text}", file=sys.stderr, flush=True)


def train_like_the_button(folder: Path, out: Path, device: str | None, extra: list[str]) -> tuple[float, float, dict]:
    """(seconds to the saved model, seconds to the end with evaluation, the closing summary)."""
    cmd = [sys.executable, "-m", "detector.cli", "train", str(folder), "-o", str(out),
           "--json-events", "--evaluate", "--no-register", *(["--device", device] if device else []), *extra]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    t_done, summary, start_msg, fetching = None, {}, "", []
    for line in proc.stdout:
        if not line.startswith("{"):
            continue
        ev = json.loads(line)
        if ev.get("kind") in ("start", "done") or (ev.get("kind") == "step" and ev.get("step", 0) % 50 == 0):
            progress(f"train {ev['kind']} step {ev.get('step')}/{ev.get('total_steps')}")
        if ev.get("kind") == "prepare":  # a first run with internet downloads its weights
            fetching.append(time.perf_counter())
        elif ev.get("kind") == "done":
            t_done = time.perf_counter() - t0
        elif ev.get("kind") == "start":
            start_msg = ev.get("message", "")
        elif "kind" not in ev:
            summary = ev
    err = proc.stderr.read()
    if proc.wait() != 0 or t_done is None:
        raise SystemExit(f"training failed: {err.strip().splitlines()[-3:]}")
    summary["start_message"] = start_msg
    summary["download_s"] = round(fetching[-1] - fetching[0], 1) if fetching else 0.0
    return t_done, time.perf_counter() - t0, summary


def unseen_metrics(folder: Path, ckpt: Path, gt: Path, device: str | None) -> dict:
    with Project(folder) as project:
        det = load_detector(project, str(ckpt))
    by_name = {c.name: c for c in det.categories}
    _, images, _, _ = plan_import(read_json(gt), str(gt), folder)
    items = [(ImageRecord(im.path, im.width, im.height), folder / im.path,
              [i.with_(category_id=by_name[name].id) for name, i in im.instances])
             for im in images.values()]
    return evaluate_detector(det, items, device)  # AP only (no slider pricing: evaluate_detector)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", default="demo,nuclei")
    ap.add_argument("--nuclei", default=str(ROOT.parent / "shared" / "data" / "nuclei"))
    ap.add_argument("--device", default=None)
    ap.add_argument("--smoke", action="store_true", help="tiny: a few images, 2 steps (checks the path only)")
    ap.add_argument("extra", nargs="*", help="after --: more `loupe train` arguments")
    args = ap.parse_args()
    extra = list(args.extra) + (["--iterations", "2", "--image-size", "96"] if args.smoke else [])
    for name in [d for d in args.datasets.split(",") if d]:
        with tempfile.TemporaryDirectory() as tmp_:
            tmp = Path(tmp_)
            if name == "demo":
                folder, gt = setup_demo(tmp, args.smoke)
            elif name == "nuclei":
                if not (Path(args.nuclei) / "annotations.json").exists():
                    print(json.dumps({"dataset": name, "skipped": f"no data at {args.nuclei}"}), flush=True)
                    continue
                folder, gt = setup_nuclei(tmp, Path(args.nuclei), args.smoke)
            else:
                raise SystemExit(f"unknown dataset {name!r}")
            ckpt = tmp / "model.pt"
            progress(f"{name}: set up, training")
            train_s, total_s, summary = train_like_the_button(folder, ckpt, args.device, extra)
            meta = load_checkpoint(ckpt)
            progress(f"{name}: saved at {train_s:.1f} s, the run ended at {total_s:.1f} s; scoring the unseen images")
            metrics = unseen_metrics(folder, ckpt, gt, args.device)
            cfg = meta.get("train_config", {})
            print(json.dumps({
                "dataset": name, "train_s": round(train_s, 1), "with_holdout_eval_s": round(total_s, 1),
                "download_s": summary["download_s"],  # inside train_s, outside the time budget
                "unseen_images": metrics["images"],
                "unseen_segm_AP": metrics["segm"]["AP"], "unseen_segm_AP50": metrics["segm"]["AP50"],
                "unseen_bbox_AP50": metrics["bbox"]["AP50"],
                **({"unseen_keypoints_AP": metrics["keypoints"]["AP"]} if "keypoints" in metrics else {}),
                "device": summary.get("start_message", "").split("device ")[-1].split(";")[0],
                "profile": meta.get("profile"), "backbone": meta["config"]["backbone"],
                "image_size": cfg.get("min_size"), "batch": cfg.get("batch_size"),
                "steps": summary.get("steps"), "train_images": summary.get("train_images"),
                "optimizer": summary.get("optimizer"), "start": meta.get("notice", "")[:80],
            }), flush=True)


if __name__ == "__main__":
    main()
