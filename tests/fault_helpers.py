"""Child processes for the kill tests: they work and report each commit; the test kills them.

    python tests/fault_helpers.py edits FOLDER        person-style edits, one commit each
    python tests/fault_helpers.py predictions FOLDER  replace_predictions rounds
    python tests/fault_helpers.py train FOLDER OUT    training that checkpoints every step
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from detector.domain import Category, Instance  # noqa: E402
from detector.store import Project  # noqa: E402

K_PREDICTIONS = 5


def edit_ops(n: int = 400) -> list[tuple]:
    """A deterministic mix of adds, moves and deletes, keyed by a marker in x1."""
    ops: list[tuple] = []
    for i in range(n):
        ops.append(("add", i))
        if i % 5 == 4:
            ops.append(("move", i - 1, 100 + i))
        if i % 7 == 6:
            ops.append(("delete", i - 3))
    return ops


def replay(ops: list[tuple]) -> dict[int, float]:
    """marker -> y1 after applying ``ops``."""
    state: dict[int, float] = {}
    for op in ops:
        if op[0] == "add":
            state[op[1]] = 0.0
        elif op[0] == "move" and op[1] in state:
            state[op[1]] = float(op[2])
        elif op[0] == "delete":
            state.pop(op[1], None)
    return state


def observed(project: Project, image_id: int) -> dict[int, float]:
    return {int(i.box[0]): i.box[1] for i in project.instances(image_id)}


def run_edits(folder: str) -> None:
    p = Project(folder)
    img = p.images()[0]
    cat = p.categories()[0]
    by_marker: dict[int, Instance] = {}
    for n, op in enumerate(edit_ops(), start=1):
        if op[0] == "add":
            by_marker[op[1]] = p.add_instance(Instance(cat.id, (float(op[1]), 0.0, op[1] + 10.0, 10.0),
                                                       image_id=img.id))
        elif op[0] == "move" and op[1] in by_marker:
            i = by_marker[op[1]]
            by_marker[op[1]] = p.update_instance(i.with_(box=(i.box[0], float(op[2]), i.box[2], op[2] + 10.0)))
        elif op[0] == "delete" and op[1] in by_marker:
            p.delete_instance(by_marker.pop(op[1]).id)
        print(n, flush=True)


def run_predictions(folder: str) -> None:
    p = Project(folder)
    cat = p.categories()[0]
    images = p.images()
    for r in range(100_000):
        for img in images:
            preds = [Instance(cat.id, (float(k), 0.0, k + 5.0, 5.0), score=r / 100_000)
                     for k in range(K_PREDICTIONS)]
            p.replace_predictions(img.id, preds)
        print(r, flush=True)


def run_train(folder: str, out: str) -> None:
    from conftest import small_train_config
    from detector.training import train_project

    p = Project(folder)
    print("start", flush=True)
    train_project(p, small_train_config(iterations=1000, checkpoint_every=1), out,
                  on_event=lambda e: print(e.kind, e.step, flush=True))


def setup_folder(folder: Path, images: int = 3) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(images):
        Image.new("RGB", (64, 48), (i * 40, 90, 120)).save(folder / f"im{i}.png")
    with Project(folder) as p:
        p.scan()
        p.add_category(Category("thing"))


if __name__ == "__main__":
    kind = sys.argv[1]
    if kind == "edits":
        run_edits(sys.argv[2])
    elif kind == "predictions":
        run_predictions(sys.argv[2])
    elif kind == "train":
        run_train(sys.argv[2], sys.argv[3])
