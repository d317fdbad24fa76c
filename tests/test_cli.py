import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from detector.store import Project

ROOT = Path(__file__).resolve().parent.parent


def loupe(*args, **kw):
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=kw.get("cwd", ROOT), timeout=300)


def test_demo_import_export_round_trip(tmp_path):
    r = loupe("demo", tmp_path / "d", "--images", 5, "--seed", 1)
    assert r.returncode == 0, r.stderr
    gt = tmp_path / "d" / "ground_truth.json"
    r = loupe("import", tmp_path / "d", gt)
    assert r.returncode == 0 and "imported" in r.stdout
    r = loupe("export", tmp_path / "d", "-o", tmp_path / "o.json", "--polygons", "--reviewed-only")
    assert r.returncode == 0, r.stderr
    out = json.loads((tmp_path / "o.json").read_text())
    assert len(out["annotations"]) == len(json.loads(gt.read_text())["annotations"])
    # Same seed, same pixels.
    loupe("demo", tmp_path / "d2", "--images", 5, "--seed", 1)
    assert (tmp_path / "d" / "scene_0003.png").read_bytes() == (tmp_path / "d2" / "scene_0003.png").read_bytes()


def test_user_mistakes_give_one_line_and_no_traceback(tmp_path):
    loupe("demo", tmp_path / "d", "--images", 2)
    (tmp_path / "bad.json").write_text("{")
    for args, words in [(("import", tmp_path / "d", tmp_path / "bad.json"), "bad.json: not valid JSON"),
                        (("import", tmp_path / "nope", tmp_path / "bad.json"), "nope: not a folder"),
                        (("import", tmp_path / "d", tmp_path / "missing.json"), "missing.json: cannot read")]:
        r = loupe(*args)
        assert r.returncode == 2
        assert words in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    # a weights file that is not there is said before torch is imported (which takes seconds)
    probe = ("import sys; from detector.cli import main; rc = main(sys.argv[1:]); "
             "print('torch' in sys.modules); sys.exit(rc)")
    for cmd in (["predict"], ["evaluate"], ["train", "-o", tmp_path / "m.pt"]):
        r = subprocess.run([sys.executable, "-c", probe, *map(str, cmd), str(tmp_path / "d"),
                            "--weights", str(tmp_path / "w.pt")], capture_output=True, text=True, cwd=ROOT)
        assert r.returncode == 2 and r.stdout.strip() == "False", (cmd, r.stdout, r.stderr)
        assert r.stderr.strip() == f"loupe {cmd[0]}: {tmp_path / 'w.pt'}: file not found"


N_BIG = 60_000


def _big_coco(folder: Path) -> Path:
    """Many annotations so an import takes long enough to be killed half-way."""
    from detector.synthetic import generate

    gt = generate(folder, n_images=20, seed=2, size=(96, 64))
    data = json.loads(gt.read_text())
    anns = []
    rng = np.random.default_rng(0)
    for i in range(N_BIG):
        x, y = rng.uniform(0, 60, size=2)
        anns.append({"id": i + 1, "image_id": int(rng.integers(1, 21)), "category_id": 1,
                     "bbox": [x, y, 10, 10], "iscrowd": 0,
                     "segmentation": [[x, y, x + 10, y, x + 10, y + 10, x, y + 10]]})
    data["annotations"] = anns
    big = folder / "big.json"
    big.write_text(json.dumps(data))
    return big


def test_kill_during_import_leaves_project_as_before(tmp_path):
    folder = tmp_path / "f"
    big = _big_coco(folder)
    with Project(folder) as p:
        p.scan()
    killed_mid_import = 0
    for delay in (0.3, 0.6, 1.0, 1.5, 2.0, 3.0, 4.0, 30.0):
        proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "import", str(folder), str(big)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
        try:
            proc.wait(timeout=delay)  # a run that ends sooner is not waited for to the last second
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        with Project(folder) as p:
            n = p.instance_count()
            statuses = {r.status.value for r in p.images()}
        if proc.returncode == -signal.SIGKILL and n == 0:
            assert statuses == {"new"}, f"half-written import after kill at {delay}s"
            killed_mid_import += 1
        else:
            # It finished (the kill, if any, came after the commit, while the process was
            # exiting): everything is there. Never anything in between.
            assert n == N_BIG, f"half-written import after kill at {delay}s ({n} of {N_BIG})"
            break
    assert killed_mid_import >= 2  # at least two kills really fell inside the import


def test_rank_lists_the_least_confident_images_first(tmp_path, project):
    from detector.domain import MODEL, Category, Instance

    cat = project.ensure_category(Category("square"))
    recs = project.images()
    scores = {0: [0.97], 1: [0.5, 0.45], 2: [0.6, 0.99, 0.1]}
    for row, ss in scores.items():
        project.replace_predictions(recs[row].id, [Instance(cat.id, (1, 1, 9, 9), score=s, source=MODEL,
                                                            changed_by=MODEL) for s in ss])
    r = loupe("rank", project.root)
    assert r.returncode == 0, r.stderr
    assert [line.split("\t")[1] for line in r.stdout.splitlines()] == [recs[i].path for i in (1, 2, 0)]
    r = loupe("rank", project.root, "--measure", "near-slider", "--top", 2, "-o", tmp_path / "order.txt")
    assert r.returncode == 0 and "2 images" in r.stdout
    rows = [line.split("\t") for line in (tmp_path / "order.txt").read_text().splitlines()]
    assert rows == [["2.0000", recs[1].path], ["1.0000", recs[2].path]]


def test_train_config_round_trips_through_loupe_trains_options():
    """The app hands the training process ``TrainConfig.to_argv()``; the process rebuilds the same
    config from loupe train's options (generated from the same fields); nothing is dropped."""
    from dataclasses import replace

    import pytest

    from detector.cli import build_parser
    from detector.train_config import TrainConfig

    cfg = TrainConfig(weights="none", iterations=40, batch_size=2, min_size=96, lr=0.002, optimizer="sgd",
                      backbone="resnet18", augment=False, amp=False, holdout=0.4, seed=1, copy_paste=0.5,
                      weight_decay=0.05, classifier_loss_weight=3.0, keypoint_loss_weight=0.5, label_smoothing=0.2,
                      step_threads=1, freeze_bn=False, trunk="none",
                      model_overrides={"anchor_sizes": (8, 16, 32, 64, 128), "box_detections_per_img": 20})
    args = build_parser().parse_args(["train", "F", "-o", "x.pt", *cfg.to_argv()])
    assert TrainConfig.from_args(args) == cfg
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="momentum"):
        replace(cfg, momentum=0.8).to_argv()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "F", "-o", "x.pt", "--freeze-bn", "maybe"])


def test_loupe_trains_time_budget_counts_from_the_commands_start(tmp_path, monkeypatch):
    """`loupe train` hands the trainer the moment the command started (before importing torch and
    reading the project), so a time budget holds the imports too: a slow host's imports must not
    push the saved model past the budget."""
    import time

    import pytest

    import detector.training as T
    from detector.cli import main

    class Stop(Exception):
        pass

    seen = {}

    def fake_train(project, cfg, output, **kw):
        seen.update(started=kw.get("started"), called=time.perf_counter(), output=output)
        raise Stop

    monkeypatch.setattr(T, "train_project", fake_train)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        t0 = time.perf_counter()
        with pytest.raises(Stop):
            main(["train", str(tmp_path), "-o", str(tmp_path / "m.pt"), "--no-register"])
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    assert seen["output"] == str(tmp_path / "m.pt")
    assert seen["started"] is not None and t0 <= seen["started"] < seen["called"]
