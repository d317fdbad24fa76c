"""GUI responsiveness: the longest GUI-thread stall while pre-annotating, and launch to first image.

1. Stall. A QTimer heartbeat (every 5 ms) runs on the GUI thread of the real MainWindow while
   "Pre-annotate all" works through a synthetic folder; the longest gap between two beats is the
   longest stall a person could feel. Named baseline: the same model call made on the GUI thread
   (what a mouse handler calling the model would do), i.e. the longest single model call.
   Also measured: the heartbeat's longest gap with the window idle (the floor), next-image
   (D) latency with neighbours prefetched, and the longest gap while the Train button's child
   process trains and the live chart draws its losses; and how long a Click tool click made a
   second into the batch takes to be answered (baseline: the batch's time left then, which the
   click waited for while fills shared the inference thread).
2. Launch. ``python main.py FOLDER`` with LOUPE_SMOKE=1 until it prints "smoke ok" (its first
   image is on screen). Named baseline: ``python -c "import torch, torchvision, PySide6.QtWidgets"``,
   the imports no Qt+torch app can avoid.

    python bench/bench_gui.py [--images 24] [--size 640x480] [--backbone resnet18] [--device cpu]
                              [--detections 100]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from PySide6.QtCore import QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from detector.images import load_image  # noqa: E402
from detector.inference import Predictor, load_detector  # noqa: E402
from detector.model import ModelConfig, build_model, save_checkpoint  # noqa: E402
from detector.store import Project  # noqa: E402
from detector.synthetic import CATEGORIES, generate  # noqa: E402


class Heartbeat:
    def __init__(self, interval_ms: int = 5):
        self.gaps: list[float] = []
        self.last = time.perf_counter()
        self.timer = QTimer()
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._beat)

    def _beat(self) -> None:
        now = time.perf_counter()
        self.gaps.append(now - self.last)
        self.last = now

    def start(self) -> None:
        self.gaps.clear()
        self.last = time.perf_counter()
        self.timer.start()

    def stop(self) -> dict:
        self.timer.stop()
        g = sorted(self.gaps) or [0.0]
        return {"max_ms": round(1000 * g[-1], 1), "p99_ms": round(1000 * g[int(0.99 * (len(g) - 1))], 1),
                "beats": len(self.gaps)}


def spin(app: QApplication, until, timeout_s: float) -> None:
    end = time.perf_counter() + timeout_s
    while not until():
        if time.perf_counter() > end:
            raise TimeoutError("benchmark step timed out")
        app.processEvents()
        time.sleep(0.001)


def launch_time(folder: Path, repeats: int) -> dict:
    # Its own settings folder, so the bench leaves no recent-folder entries behind.
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", LOUPE_SMOKE="1",
               XDG_CONFIG_HOME=str(folder.parent / "config"))
    ours, base = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch, torchvision, PySide6.QtWidgets"],
                       check=True, cwd=ROOT)
        base.append(time.perf_counter() - t)
        t = time.perf_counter()
        # Timed to the "smoke ok" line (the first image is on screen), not to the exit: closing
        # waits for the worker's torch import, which the window no longer waits for.
        proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), str(folder)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        shown = None
        for line in proc.stdout:
            if "smoke ok" in line:
                shown = time.perf_counter() - t
        err = proc.stderr.read()
        assert proc.wait(timeout=300) == 0 and shown is not None, err[-2000:]
        ours.append(shown)
    b, o = min(base), min(ours)
    return {"baseline_imports_s": round(b, 2), "launch_to_first_image_s": round(o, 2),
            "ratio_vs_imports": round(o / b, 2)}


def _json_first_box(gt: Path, name: str) -> list[float]:
    """The first object's box (x0, y0, x1, y1) on image ``name`` of the COCO file ``gt``."""
    data = json.loads(Path(gt).read_text())
    image_id = next(im["id"] for im in data["images"] if im["file_name"] == name)
    x, y, w, h = next(a["bbox"] for a in data["annotations"] if a["image_id"] == image_id)
    return [x, y, x + w, y + h]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--device", default=None)
    ap.add_argument("--launch-repeats", type=int, default=3)
    ap.add_argument("--train-steps", type=int, default=20)
    ap.add_argument("--detections", type=int, default=100, help="kept per image (a random model fills them all)")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    app = QApplication.instance() or QApplication([])
    app.setOrganizationName("LoupeBench")
    from app.main_window import MainWindow

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "imgs"
        gt = generate(folder, n_images=args.images, seed=11, size=(w, h))
        torch.manual_seed(0)
        det = build_model(categories=CATEGORIES, weights="none",
                          config=ModelConfig(backbone=args.backbone, min_size=h, max_size=w,
                                             box_detections_per_img=args.detections))
        ckpt = save_checkpoint(Path(tmp) / "m.pt", det)
        with Project(folder) as p:
            p.scan()
            p.add_model("bench", str(ckpt), {}, {}, 0, activate=True)

        # Baseline: one model call on the calling (GUI) thread, per image; its longest is the stall.
        with Project(folder) as p:
            pred = Predictor(load_detector(p, str(ckpt)), args.device)
            arrays = [load_image(p.abspath(r)) for r in p.images()[:6]]
        pred.predict(arrays[:1])
        calls = []
        for a in arrays:
            t = time.perf_counter()
            pred.predict([a])
            calls.append(time.perf_counter() - t)
        del pred

        project = Project(folder)
        win = MainWindow(project)
        win.resize(1400, 900)
        win.show()
        spin(app, lambda: win.model_side.info is not None and win.canvas.has_image, 120)
        hb = Heartbeat()
        hb.start()
        idle_end = time.perf_counter() + 2.0
        spin(app, lambda: time.perf_counter() > idle_end, 30)
        idle = hb.stop()

        # Next-image latency with neighbours prefetched (A/D), before the model is busy.
        nav = []
        for _ in range(min(6, args.images - 1)):  # next stops at the last image
            spin(app, lambda: win.loader.pool.activeThreadCount() == 0, 30)
            current = win.current_image_id
            t = time.perf_counter()
            win.acts.next.trigger()
            spin(app, lambda: win.current_image_id != current and win.canvas.has_image
                 and win.editor.image_id == win.current_image_id, 30)
            nav.append(time.perf_counter() - t)

        # A click with the Click tool a second into the batch: answered by the fill thread at once
        # (named baseline: the batch's time left then, what the click waited for when fills and
        # clicks shared the inference thread).
        answered: list[float] = []
        win.model_side.clicked.connect(lambda _p: answered.append(time.perf_counter()))
        win.editor.current_category = next(iter(win.editor.categories))
        truth = _json_first_box(gt, project.image(win.current_image_id).path)
        hb.start()
        t = time.perf_counter()
        win.models.predict_all()
        spin(app, lambda: time.perf_counter() > t + 1.0, 30)
        clicked_at = time.perf_counter()
        win.editor.add_click((truth[0] + truth[2]) / 2, (truth[1] + truth[3]) / 2)
        spin(app, lambda: win.model_side.batch_request < 0, 1800)
        busy_s = time.perf_counter() - t
        busy = hb.stop()
        batch_end = time.perf_counter()
        spin(app, lambda: bool(answered), 60)

        # Training from the window: the child process streams losses to the live chart.
        import json as _json

        from detector.train_config import TrainConfig
        from detector.coco import import_coco

        data = _json.loads(gt.read_text())
        keep = {im["id"] for im in data["images"][:6]}
        data["images"] = [im for im in data["images"] if im["id"] in keep]
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
        subset = Path(tmp) / "six.json"
        subset.write_text(_json.dumps(data))
        import_coco(project, subset)
        win.training.config = TrainConfig(iterations=args.train_steps, batch_size=2, min_size=h // 2,
                                          weights="none", backbone=args.backbone, augment=False)
        finished = []
        win.training.runner.finished.connect(finished.append)
        hb.start()
        t = time.perf_counter()
        win.training.start()
        spin(app, lambda: bool(finished), 1800)
        train_s = time.perf_counter() - t
        training = hb.stop()
        assert finished[0]["ok"], finished[0].get("message")
        # The new model is swapped in and re-annotates the rest; let that finish before closing.
        spin(app, lambda: not win.models.reannotate_after_load and win.model_side.batch_request < 0
             and not win.training.runner.running, 900)
        win.close()
        project.close()
        launch = launch_time(folder, args.launch_repeats)

    result = {
        "device": str(win.model_side.info.device if win.model_side.info else args.device),
        "backbone": args.backbone, "images": args.images, "size": args.size,
        "pre_annotate_s": round(busy_s, 1),
        "gui_stall_while_pre_annotating": busy,
        "gui_stall_idle": idle,
        "train_in_app_s": round(train_s, 1), "train_steps": args.train_steps,
        "gui_stall_while_training": training,
        "click_during_batch_ms": round(1000 * (answered[0] - clicked_at), 1),
        "baseline_batch_left_at_click_ms": round(1000 * (batch_end - clicked_at), 1),
        "baseline_model_call_on_gui_thread_ms": round(1000 * max(calls), 1),
        "stall_ratio_baseline_over_ours": round(max(calls) * 1000 / max(1e-3, busy["max_ms"]), 1),
        "next_image_ms": {"max": round(1000 * max(nav), 1), "median": round(1000 * sorted(nav)[len(nav) // 2], 1)},
        **launch,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
