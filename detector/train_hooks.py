"""Trainer hooks that come with Loupe (detectron2's PeriodicCheckpointer and EvalHook idea):
a resumable checkpoint every N steps, and the held-out evaluation after a finished run."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .train_config import Hook, TrainEvent

if TYPE_CHECKING:
    from .training import Trainer


class PeriodicCheckpointer(Hook):
    """A resumable checkpoint every ``every`` steps (not at the last: that one is complete)."""

    def __init__(self, every: int):
        self.every = every

    def after_step(self, trainer: Trainer, event: TrainEvent) -> None:
        if self.every and trainer.step % self.every == 0 and trainer.step < trainer.total_steps:
            trainer.save(trainer.output, complete=False)
            trainer.emit(TrainEvent("checkpoint", trainer.step, trainer.total_steps, event.epoch,
                                    message=str(trainer.output)))


class EvalHook(Hook):
    """After a finished run: COCO AP of the saved model on the images the run held out, and of
    ``compare`` (the active model) on the same images; reported as an ``eval`` event and kept in
    ``metrics`` ({"after", "before"}) for detector.versions.register. Rank 0 only."""

    def __init__(self, project, compare: str | None = None, device: str | None = None):
        self.project, self.compare, self.device = project, compare, device
        self.metrics: dict | None = None

    def after_train(self, trainer: Trainer) -> None:
        if not trainer.is_main or trainer.result is None or not trainer.result.ok:
            return
        from .evaluation import held_out_metrics

        after, before = held_out_metrics(self.project, str(trainer.output), self.compare, device=self.device)
        self.metrics = {"after": after, "before": before}
        trainer.emit(TrainEvent("eval", trainer.step, trainer.total_steps, metrics=self.metrics))
