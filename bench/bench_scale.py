"""Big folders: launch to the first image, peak memory, the list, filters, at N images.

For each N (default 40, 10,000, 100,000) a folder of N JPEG files (640x480, in 100 sub-folders;
eight encoded images hard-linked over and over, so it is quick to make) is opened twice with
``LOUPE_SMOKE=1 python main.py FOLDER``: the first time the project is new (the folder is read
before the first image can be shown), the second time it is known (the stored list shows at once,
the folder is read again in the background). Timed to the "smoke ok" line (first image on
screen); peak RSS of the whole process, which also imports torch on the worker's thread.
In-process: reading the folder (``Project.scan``), loading the list into the image list, and the
filters (a file-name substring, "has predictions", a status); in the real window, the longest
GUI-thread stall while a new project's files, then a known project's stored list, stream into the
list, and the known project's next-image latency (Next to the image on screen, 20 steps).
Named baseline: ``python -c "import torch, torchvision, PySide6.QtWidgets"`` (time and RSS).

    python bench/bench_scale.py [--n 40,10000,100000]
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RSS = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
       "p = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, text=True); shown = None\n"
       "for line in p.stdout:\n"
       "    if 'smoke ok' in line: shown = time.perf_counter() - t\n"
       "p.wait(); print(shown if shown is not None else time.perf_counter() - t, "
       "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def measure(cmd: list[str], env: dict) -> tuple[float, float]:
    """(seconds to 'smoke ok' or to exit, peak RSS in MB) of one run of ``cmd``."""
    out = subprocess.run([sys.executable, "-c", RSS, *cmd], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=600)
    t, kb = out.stdout.split()[-2:]
    return float(t), int(kb) / 1024


def make_folder(folder: Path, n: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    seeds = []
    for k in range(8):
        p = folder / f"seed{k}.jpg"
        Image.new("RGB", (640, 480), (30 * k, 120, 200 - 20 * k)).save(p, quality=85)
        seeds.append(p)
    for i in range(n - len(seeds)):
        d = folder / f"d{i % 100:02d}"
        d.mkdir(exist_ok=True)
        os.link(seeds[i % len(seeds)], d / f"im{i:06d}.jpg")


def in_process(folder: Path) -> dict:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtWidgets import QApplication

    from app.image_list import ImageListWidget
    from detector.domain import ImageStatus
    from detector.store import Project

    app = QApplication.instance() or QApplication([])
    with Project(folder) as p:
        t = time.perf_counter()
        p.scan()  # the project exists: what a reopen reads in the background
        rescan_s = time.perf_counter() - t
        t = time.perf_counter()
        records = p.images()
        w = ImageListWidget()
        w.ids_with = lambda key, image_id=None: p.image_ids_with(key, image_id)
        w.model.set_records(records)
        app.processEvents()
        list_s = time.perf_counter() - t
        filters = {}
        for name, act in (("name", lambda: w.search.setText("im0042")),
                          ("predictions", lambda: w.content.setCurrentIndex(w.content.findData("predictions"))),
                          ("status", lambda: w.filter.setCurrentIndex(w.filter.findData(ImageStatus.NEW.value)))):
            t = time.perf_counter()
            act()
            app.processEvents()
            filters[name] = round((time.perf_counter() - t) * 1000, 1)
        w.deleteLater()
    return {"rescan_s": round(rescan_s, 2), "list_load_s": round(list_s, 2), "filter_ms": filters}


def open_and_watch(folder: Path, db: Path, next_images: int = 0) -> dict:
    """The longest GUI-thread gap (a 5 ms heartbeat) from opening ``folder`` (project store
    ``db``) in the real MainWindow until its background job has streamed every image into the
    list; then, with ``next_images``, the median time from Next to the next image on screen."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QElapsedTimer, QTimer
    from PySide6.QtWidgets import QApplication

    from app.main_window import MainWindow
    from detector.store import Project

    app = QApplication.instance() or QApplication([])
    w = MainWindow()
    w.show()
    clock, gaps, last = QElapsedTimer(), [], [0]
    clock.start()

    def beat() -> None:
        now = clock.elapsed()
        gaps.append(now - last[0])
        last[0] = now

    timer = QTimer()
    timer.timeout.connect(beat)
    timer.start(5)
    done, shown = [], []
    w.scanned.connect(done.append)
    w.image_shown.connect(shown.append)
    t = time.perf_counter()
    w.set_project(Project(folder, db))
    while not done and time.perf_counter() - t < 300:
        app.processEvents()
        time.sleep(0.001)
    scan_s = time.perf_counter() - t
    timer.stop()
    stall = max(gaps, default=0)
    rows = w.image_list.model.rowCount()
    latencies = []
    for _ in range(next_images):
        n0, t = len(shown), time.perf_counter()
        w.step(1)
        while len(shown) == n0 and time.perf_counter() - t < 10:
            app.processEvents()
        latencies.append((time.perf_counter() - t) * 1000)
    w.close()
    out = {"stall_ms": stall, "list_complete_s": round(scan_s, 2), "listed": rows}
    if latencies:
        out["next_image_ms_median"] = round(sorted(latencies)[len(latencies) // 2], 1)
        out["next_image_ms_max"] = round(max(latencies), 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", default="40,10000,100000")
    args = ap.parse_args()
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", LOUPE_SMOKE="1")
    base_t, base_mb = measure([sys.executable, "-c", "import torch, torchvision, PySide6.QtWidgets"], env)
    print(json.dumps({"baseline": "import torch, torchvision, PySide6.QtWidgets",
                      "seconds": round(base_t, 2), "peak_rss_mb": round(base_mb)}), flush=True)
    # The first window of the process also imports torch on the worker's thread; loading
    # libtorch holds the GIL for ~200 ms, once per process, whatever the folder. Taken here on a
    # tiny folder and reported apart, so the stalls below are the folder's.
    with tempfile.TemporaryDirectory() as tmp:
        make_folder(Path(tmp) / "tiny", 2)
        first = open_and_watch(Path(tmp) / "tiny", Path(tmp) / "tiny.db")
        print(json.dumps({"first_window_of_the_process_stall_ms": first["stall_ms"],
                          "what": "includes importing torch on the worker's thread"}), flush=True)
    for n in (int(v) for v in args.n.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "big"
            make_folder(folder, n)
            env["XDG_CONFIG_HOME"] = str(Path(tmp) / "config")  # leaves no recent-folder entries
            first_t, first_mb = measure([sys.executable, str(ROOT / "main.py"), str(folder)], env)
            again_t, again_mb = measure([sys.executable, str(ROOT / "main.py"), str(folder)], env)
            row = {"images": n, "new_project_first_image_s": round(first_t, 2),
                   "known_project_first_image_s": round(again_t, 2),
                   "peak_rss_mb": round(max(first_mb, again_mb)),
                   "over_import_floor_mb": round(max(first_mb, again_mb) - base_mb),
                   **in_process(folder)}
            db = Path(tmp) / "stall.db"
            row.update({f"new_{k}": v for k, v in open_and_watch(folder, db).items()})
            row.update({f"known_{k}": v for k, v in open_and_watch(folder, db, next_images=20).items()})
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
