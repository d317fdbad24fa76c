"""The ``loupe`` command: ``run`` sends headless subcommands (demo, import, export, predict, rank,
train, evaluate) to detector.cli and everything else to ``main``, which starts the Qt application:
``loupe [FOLDER] [--project P]`` (a demo folder when none is given)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def run(argv: list[str] | None = None) -> int:
    """Entry point of ``loupe`` and ``python main.py``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    from detector.cli import COMMANDS

    if argv and (argv[0] in COMMANDS or argv[0] in ("-h", "--help")):
        from detector.cli import main as cli_main

        return cli_main(argv)
    return main(argv)


def demo_folder() -> Path:
    """The demo folder, generated on first use: synthetic scenes, the first few already reviewed."""
    from PySide6.QtCore import QStandardPaths

    from detector.synthetic import make_demo

    # GenericDataLocation (~/.local/share on Linux) + "Loupe": AppDataLocation would add the
    # organisation and the application name, both "Loupe" (~/.local/share/Loupe/Loupe).
    generic = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.GenericDataLocation)
    base = Path(os.environ.get("LOUPE_DEMO_DIR") or Path(generic) / "Loupe" / "demo")
    return make_demo(base)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="loupe", description="Open the Loupe labeling window.")
    parser.add_argument("folder", nargs="?", help="folder of images (default: a demo folder)")
    parser.add_argument("--project", help="project database path (for read-only folders)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication, QMessageBox

    from detector.store import Project, ProjectError

    from .main_window import MainWindow

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setOrganizationName("Loupe")
    app.setApplicationName("Loupe")
    stylesheet = Path(__file__).resolve().parent.parent / "resources" / "style.qss"
    if stylesheet.exists():
        app.setStyleSheet(stylesheet.read_text())
    folder = Path(args.folder) if args.folder else demo_folder()
    smoke = os.environ.get("LOUPE_SMOKE") == "1"
    try:
        project = Project(folder, args.project, exclusive=True)
    except ProjectError as exc:
        print(f"loupe: {exc}", file=sys.stderr)
        if not smoke:
            QMessageBox.critical(None, "Loupe", str(exc))
        return 2
    window = MainWindow(project)
    shot = os.environ.get("LOUPE_SCREENSHOT")

    done = False

    def finish(_image_id: int = 0) -> None:
        nonlocal done
        if done:
            return
        done = True
        def grab_and_quit() -> None:
            if shot:
                window.grab().save(shot)
            if smoke:
                print("smoke ok", flush=True)
                QTimer.singleShot(0, window.close)

        # A moment for the list's thumbnails, decoded off the GUI thread, to land first.
        QTimer.singleShot(500 if shot else 0, grab_and_quit)

    train_steps = int(os.environ.get("LOUPE_SCREENSHOT_TRAIN_STEPS", "0") or 0)

    def shot_while_training(ev) -> None:
        # LOUPE_SCREENSHOT_TRAIN_STEPS=N: press Train, take the picture after N steps, cancel.
        if ev.kind == "step" and ev.step >= train_steps:
            window.training.runner.event.disconnect(shot_while_training)
            QTimer.singleShot(200, lambda: (window.grab().save(shot), print("screenshot taken", flush=True),
                                            window.training.runner.kill(), window.close()))

    def on_shown(image_id: int) -> None:
        window.image_shown.disconnect(on_shown)  # the first image only
        if shot and train_steps:
            window.training.runner.event.connect(shot_while_training)
            window.training.start()
            return
        # With a model and an image still to annotate, the picture waits for its predictions
        # (or the worker's error, or 60 s), so it shows what a person sees.
        rec = project.image(image_id)
        if shot and project.active_model() is not None and rec.status.value == "new":
            window.predictions_shown.connect(finish)
            window.model_side.thread.worker.errored.connect(lambda _m: finish())
            QTimer.singleShot(60_000, finish)
        else:
            finish()

    if smoke or shot:
        window.image_shown.connect(on_shown)
        QTimer.singleShot(120_000, lambda: (print("smoke: no image shown", file=sys.stderr),
                                            app.exit(1)))
    window.show()
    return app.exec()
