"""Reliability tally for bench/RESULTS.md: faults injected, kill points, bad inputs, edits lost, crashes.

Runs the same fault children as tests/test_faults.py, with more kill points than the test suite,
and feeds every bad input the suite knows to the real readers. A 'crash' is anything other than
the clear, file-naming error (ImageReadError, CocoError, CheckpointError) that each reader promises.

    python bench/bench_reliability.py [--kills 60]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import fault_helpers as FH  # noqa: E402
from test_coco import BAD, _quirky  # noqa: E402
from test_faults import _bad_images, _kill_after_lines, _spawn  # noqa: E402

from detector.coco import CocoError, import_coco  # noqa: E402
from detector.images import ImageReadError, load_image  # noqa: E402
from detector.store import Project  # noqa: E402


def kill_edits(tmp: Path, kills: int) -> dict:
    folder = tmp / "edits"
    FH.setup_folder(folder)
    ops, rng = FH.edit_ops(), random.Random(0)
    lost = committed_total = corrupt = 0
    for _ in range(kills):
        with Project(folder) as p:
            for i in p.instances(p.images()[0].id):
                p.delete_instance(i.id)
        last = _kill_after_lines(_spawn("edits", folder), rng.randint(1, 300), rng.uniform(0, 0.02))
        committed = int(last) if last and last.isdigit() else 0
        committed_total += committed
        with Project(folder) as p:
            corrupt += p._conn().execute("PRAGMA integrity_check").fetchone()[0] != "ok"
            got = FH.observed(p, p.images()[0].id)
        exp = FH.replay(ops[:committed])
        if got not in (exp, FH.replay(ops[:committed + 1])):
            lost += sum(got.get(m) != v for m, v in exp.items())
    return {"kill_points": kills, "committed_edits_checked": committed_total, "edits_lost": lost,
            "corrupt_databases": corrupt}


def kill_predictions(tmp: Path, kills: int) -> dict:
    folder = tmp / "preds"
    FH.setup_folder(folder)
    rng, half = random.Random(1), 0
    for _ in range(kills):
        _kill_after_lines(_spawn("predictions", folder), rng.randint(1, 30), rng.uniform(0, 0.05))
        with Project(folder) as p:
            for img in p.images():
                preds = p.instances(img.id)
                half += len(preds) != FH.K_PREDICTIONS or len({i.score for i in preds}) != 1
    return {"kill_points": kills, "half_written_images": half}


def bad_inputs(tmp: Path) -> dict:
    tried = crashes = unclear = 0
    expect = _bad_images(tmp / "imgs")
    for name, words in expect.items():
        tried += 1
        try:
            load_image(tmp / "imgs" / name)
            unclear += words is not None
        except ImageReadError as exc:
            unclear += words is None or name not in str(exc)
        except Exception:
            crashes += 1
    (tmp / "coco").mkdir()
    data = _quirky(tmp / "coco")
    for case, make in BAD.items():
        tried += 1
        with Project(tmp / "coco") as p:
            p.scan()
            before = (p.categories(), p.images(), [p.instances(r.id) for r in p.images()])
            bad = make(copy.deepcopy(data))
            path = tmp / "coco" / "bad.json"
            path.write_text(bad if isinstance(bad, str) else json.dumps(bad))
            try:
                import_coco(p, path)
                unclear += 1
            except CocoError as exc:
                unclear += "bad.json" not in str(exc)
            except Exception:
                crashes += 1
            after = (p.categories(), p.images(), [p.instances(r.id) for r in p.images()])
            unclear += before != after
    return {"bad_inputs": tried, "crashes": crashes, "unclear_or_changed": unclear}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=60)
    args = ap.parse_args()
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        out = {"edits": kill_edits(tmp, args.kills),
               "predictions": kill_predictions(tmp, args.kills // 2),
               "bad_inputs": bad_inputs(tmp)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
