"""detector/ must never import Qt or app/: checked by importing every module with PySide6 blocked."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHECK = r"""
import importlib, pkgutil, sys
sys.modules['PySide6'] = None   # any 'import PySide6...' now raises ImportError
import detector
for m in pkgutil.walk_packages(detector.__path__, 'detector.'):
    importlib.import_module(m.name)
bad = [n for n in sys.modules if n == 'app' or n.startswith('app.') or n.startswith('PySide6.')]
assert not bad, bad
print('ok', len([n for n in sys.modules if n.startswith('detector')]))
"""


def test_detector_imports_without_qt():
    out = subprocess.run([sys.executable, "-c", CHECK], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")


def test_no_qt_import_lines_in_detector():
    offenders = []
    for f in (ROOT / "detector").rglob("*.py"):
        for n, line in enumerate(f.read_text().splitlines(), 1):
            s = line.strip()
            if s.startswith(("import PySide6", "from PySide6", "import app", "from app")):
                offenders.append(f"{f.name}:{n}: {s}")
    assert not offenders
