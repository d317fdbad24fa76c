import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture
def demo(tmp_path):
    """A small synthetic folder and its ground-truth COCO file."""
    from detector.synthetic import generate

    folder = tmp_path / "shapes"
    gt = generate(folder, n_images=6, seed=3, size=(128, 96))
    return folder, gt


@pytest.fixture
def project(demo):
    from detector.store import Project

    folder, _ = demo
    p = Project(folder)
    p.scan()
    yield p
    p.close()
