"""The model side as the window shows it: the status-bar model label and batch progress, the
starting-model offer, pre-annotation requests and what their answers change on screen. The
worker itself, and its requests and answers, are app/model_side.py."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtWidgets import QLabel, QMessageBox, QProgressBar

from detector.domain import Prediction
from detector.versions import SliderAdvice, click_shows_hidden, slider_advice, version_for

from .model_side import ModelSide
from .workers import ModelInfo

if TYPE_CHECKING:
    from .main_window import MainWindow


class ModelController:
    def __init__(self, w: MainWindow):
        self.w = w
        self.side = ModelSide(lambda: w.project, w)  # the worker, on its own thread
        self.reannotate_after_load = False
        self.device_label = QLabel("model: none")
        self.device_label.setObjectName("modelLabel")  # resources/style.qss sets it off from a long message
        self.progress = QProgressBar()
        self.progress.setMaximumWidth(240)
        self.progress.setVisible(False)
        w.statusBar().addPermanentWidget(self.progress)
        w.statusBar().addPermanentWidget(self.device_label)
        s = self.side
        s.ready.connect(self._on_ready)
        s.warmed.connect(self._on_warmed)
        s.predicted.connect(self._on_prediction)
        s.filled.connect(lambda pred: w.editor.apply_fill(pred.image_id, list(pred.instances)))
        s.clicked.connect(lambda pred: w.editor.apply_clicks(pred.image_id, list(pred.instances),
                                                             int(pred.extra.get("missed", 0)),
                                                             pred.extra.get("splits", []),
                                                             pred.extra.get("unsplit", [])))
        s.batch_started.connect(self._on_batch_started)
        s.batch_progress.connect(self._on_batch_progress)
        s.batch_done.connect(self._on_batch_done)
        s.state.connect(self.device_label.setText)
        s.message.connect(w.say)
        w.starting.added.connect(self._on_starting_model)
        w.editor.fill_requested.connect(self.ask_fill)
        w.editor.click_requested.connect(self.ask_click)

    def start(self) -> None:
        """A fresh worker for the open project (also Model > Restart model worker)."""
        self.w.starting.refresh()
        self.w.acts.predict_all.setEnabled(False)
        self.side.start()

    def stop(self) -> None:
        self.side.stop()

    def load(self, weights: str, reannotate: bool = False) -> None:
        """Swap the model in the running worker (no restart); then maybe pre-annotate again."""
        self.reannotate_after_load = self.reannotate_after_load or reannotate
        self.side.load(weights)

    def _on_warmed(self, device: str) -> None:
        """torch is imported (on the worker's thread): the starting-model offer can be made."""
        w = self.w
        w.starting.ready = True
        if self.side.info is None and w.project is not None and w.project.active_model() is None:
            self.device_label.setText(f"{device} · no model yet: start from COCO weights, or review "
                                      "a few images (Space) and Train")
        w.starting.refresh()

    def start_from_coco(self) -> None:
        from detector.pretrained import cache_path

        starting = self.w.starting
        if cache_path().is_file():
            starting.use_coco()
        else:
            starting.refresh()
            starting.banner.setVisible(True)
            starting.download()

    def _on_starting_model(self, path: str) -> None:
        """A COCO start or a loaded file is now the active model: load it and pre-annotate."""
        self.w.say(f"Starting model ready ({Path(path).name}); pre-annotating…", 10000)
        self.load(path, reannotate=True)

    def _on_ready(self, info: ModelInfo) -> None:
        w = self.w
        advice = self._advice_for(info.name)
        version = version_for(w.project, info.name) if w.project is not None else None
        w.editor.click_shows_hidden = click_shows_hidden(version.metrics if version else None)
        self.device_label.setText(f"{info.device} · model: {Path(info.name).stem}"
                                  + (f" · suggests confidence {advice.value:.2f}" if advice else ""))
        tips = [f"Confidence {advice.value:.2f}: {advice.text()}"] if advice else []
        tips += [info.fill] if info.fill else []
        self.device_label.setToolTip("\n".join(tips))
        w.acts.predict_all.setEnabled(True)
        w.training.autotrain.announce()
        if info.notice:
            w.say(info.notice, 8000)
        w.acts.suggest_slider(advice)
        if self.reannotate_after_load:
            self.reannotate_after_load = False
            self.predict_all()
        elif w.current_image_id is not None:
            self.side.predict_image(w.current_image_id)

    def _advice_for(self, weights: str) -> SliderAdvice | None:
        """The slider the loaded model's version suggests (its held-out images' cheapest)."""
        project = self.w.project
        if project is None:
            return None
        version = version_for(project, weights)
        return slider_advice(version.metrics) if version is not None else None

    def ask_fill(self, image_id: int, boxes: list, category_ids: list, instance_ids: list) -> None:
        if not self.side.fill(image_id, boxes, category_ids, instance_ids):
            self.w.say("No project open: the box stays a plain box.", 6000)

    def ask_click(self, image_id: int, points: list, category_ids: list, insides: list) -> None:
        if not self.side.fill_clicks(image_id, points, category_ids, insides):
            self.w.say("No project open.", 6000)

    def predict_all(self) -> None:
        if not self.side.predict_all(first=self.w.current_image_id):
            QMessageBox.information(self.w, "No model yet",
                                    "There is no model to pre-annotate with yet. Review a few images "
                                    "(Space marks one reviewed), then Train.")

    def cancel(self) -> None:
        self.side.cancel()

    def _on_prediction(self, pred: Prediction) -> None:
        w = self.w
        if w.project is None:
            return
        w.image_list.model.update_record(w.project.image(pred.image_id))
        if pred.image_id == w.current_image_id:
            w.refresh_instances()
            w.predictions_shown.emit(pred.image_id)

    def _on_batch_started(self, n: int) -> None:
        self.progress.setRange(0, max(1, n))
        self.progress.setValue(0)
        self.progress.setFormat("%v/%m")
        self.progress.setVisible(True)
        self.w.acts.cancel.setEnabled(True)

    def _on_batch_progress(self, done: int, eta_s: float) -> None:
        self.progress.setValue(done)
        self.progress.setFormat(f"%v/%m  ETA {int(eta_s)} s")

    def _on_batch_done(self, error: str) -> None:
        self.progress.setVisible(False)
        self.w.acts.cancel.setEnabled(False)
        if error:
            self.w.say(f"Pre-annotation stopped: {error}", 30000)
        elif self.w.project is not None:
            counts = self.w.project.status_counts()
            self.w.say("Pre-annotation finished: " + ", ".join(f"{n} {s.value}" for s, n in counts.items() if n),
                       8000)

