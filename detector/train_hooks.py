"""Trainer hooks that come with Loupe (detectron2's PeriodicCheckpointer and EvalHook idea):
a resumable checkpoint every N steps, the held-out evaluation after a finished run, and an
exponential moving average of the weights."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

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

        held = trainer.extra_meta.get("holdout", {}).get("images", [])  # what the checkpoint says too
        after, before = held_out_metrics(self.project, str(trainer.output), self.compare, device=self.device,
                                         held=held)
        self.metrics = {"after": after, "before": before}
        trainer.emit(TrainEvent("eval", trainer.step, trainer.total_steps, metrics=self.metrics))


class WeightAverage(Hook):
    """An exponential moving average of the weights and BatchNorm statistics (``decay`` per step,
    ramped up over the first steps as timm's ModelEmaV2 does), put into the model after the last
    step, so the finished checkpoint holds the average. A cancelled or resumed run keeps the plain
    weights (the average is not saved in between)."""

    def __init__(self, decay: float):
        self.decay = decay
        self.keys: list[str] = []
        self.live: list[torch.Tensor] = []  # the model's own tensors (state_dict shares their storage)
        self.avg: list[torch.Tensor] = []
        self.n = 0

    def before_train(self, trainer: Trainer) -> None:
        state = trainer.model.state_dict()
        self.keys = [k for k, v in state.items() if v.is_floating_point()]
        self.live = [state[k] for k in self.keys]
        self.avg = [t.detach().float().clone() for t in self.live]
        self.n = 0

    @torch.no_grad()
    def after_step(self, trainer: Trainer, event: TrainEvent) -> None:
        self.n += 1
        decay = min(self.decay, (1 + self.n) / (10 + self.n))
        torch._foreach_lerp_(self.avg, [t.float() for t in self.live], 1.0 - decay)
        if trainer.step >= trainer.total_steps:
            for live, avg in zip(self.live, self.avg):
                live.copy_(avg)
