"""Model versions: the one rule that decides whether a newly trained model replaces the active one.

The app's Train button, training while labeling and ``loupe train`` all go through
``register``: both models are scored on the same held-out reviewed images (the new run's), and
the new model becomes active when nothing is active yet, when the active model could not be
scored, or when its headline AP is not worse.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .store import ModelVersion, Project


def headline(metrics: dict | None) -> float | None:
    """The number that decides 'better': segm AP, else bbox AP."""
    if not metrics:
        return None
    for key in ("segm", "bbox"):
        if metrics.get(key):
            return metrics[key]["AP"]
    return None


@dataclass(frozen=True)
class Registered:
    version: ModelVersion
    promoted: bool
    ap: float | None  # the new model's headline AP on the held-out images
    before: float | None  # the active model's on the same images

    def text(self, then: str = "re-annotating the images not yet reviewed.") -> str:
        out = f"{self.version.name}: segm AP {self.ap if self.ap is not None else '—'}"
        if self.before is not None:
            out += f" (before: {self.before})"
        if self.promoted:
            return out + f" — now the active model; {then}"
        return out + " — not better than the active model; activate it from Model versions if you prefer it."


# The number of reviewed images when the active model's training started (project meta): the app's
# training while labeling counts newly reviewed images from it, for runs started there or by `loupe train`.
REVIEWED_AT_TRAINING = "reviewed_at_last_training"


def register(project: Project, checkpoint: str | Path, after: dict | None, before: dict | None,
             settings: dict, images_seen: int, name: str | None = None) -> Registered:
    """Add a trained checkpoint as a model version; make it active when it is not worse.

    ``after`` and ``before`` are the new and the active model's metrics on the new run's
    held-out images (``evaluation.evaluate_project``); the version keeps the old model's
    headline as ``compared_with``.
    """
    new, old = headline(after), headline(before)
    better = project.active_model() is None or old is None or (new is not None and new >= old)
    version = project.add_model(name or Path(checkpoint).stem.split("-")[0], str(checkpoint),
                                {**(after or {}), "compared_with": old}, settings, int(images_seen),
                                activate=better)
    return Registered(version, better, new, old)


def next_checkpoint(project: Project, stamp: int) -> Path:
    """Where the next version's checkpoint goes: ``models/v<N>-<stamp>.pt`` beside the store."""
    return project.db_path.parent / "models" / f"v{len(project.models()) + 1}-{stamp}.pt"


@dataclass(frozen=True)
class SliderAdvice:
    """The confidence slider a model's held-out images cost least at (``evaluation.slider_choice``)."""

    value: float
    seconds: float  # an image at ``value``, priced by the simulated annotator
    default_seconds: float | None  # the same at the default slider (0.50)
    images: int

    def text(self) -> str:
        n = f"{self.images} held-out image{'s' if self.images != 1 else ''}"
        if self.value >= 1.0:
            out = (f"on its {n} clicking or boxing every object (Loupe fills the mask) costs "
                   f"~{self.seconds:.0f} s an image; showing its predictions saved little or nothing there")
        else:
            out = f"on its {n} this leaves the least to correct, ~{self.seconds:.0f} s an image"
        if self.default_seconds is not None and abs(self.value - 0.5) > 1e-6:
            out += f" (at 0.50: ~{self.default_seconds:.0f} s)"
        return out

    def short(self) -> str:
        """The same in a status bar's width (the slider's tooltip keeps ``text``)."""
        n = f"{self.images} held-out image{'s' if self.images != 1 else ''}"
        if self.value >= 1.0:
            return f"predictions hidden: on its {n} showing them saved little (~{self.seconds:.0f} s an image)"
        at_half = f", at 0.50 ~{self.default_seconds:.0f} s" if self.default_seconds is not None \
            and abs(self.value - 0.5) > 1e-6 else ""
        return f"the least to correct on its {n}, ~{self.seconds:.0f} s an image{at_half}"


def slider_advice(metrics: dict | None) -> SliderAdvice | None:
    """The slider a version's held-out metrics suggest, or None (no held-out images, or a
    version from before the slider was priced)."""
    choice = (metrics or {}).get("slider")
    if not choice or "best" not in choice:
        return None
    by = choice.get("seconds_per_image", {})
    best = float(choice["best"])
    return SliderAdvice(best, float(by.get(f"{best:.2f}", 0.0)),
                        float(by["0.50"]) if "0.50" in by else None,
                        int(choice.get("images") or metrics.get("images") or 0))


def click_shows_hidden(metrics: dict | None) -> bool:
    """Whether the Click tool shows a prediction the slider hides at the click: off where the
    region grown from the click cost less on the version's held-out images
    (``evaluation.slider_choice``); on where it was never priced."""
    shown = ((metrics or {}).get("slider") or {}).get("click_shows_hidden")
    return True if shown is None else bool(shown)


def fill_uses_model(metrics: dict | None) -> bool:
    """Whether a version's masks stay among the Box tool's fill candidates: off where they did not
    make its held-out images' fill cheaper than the classical cuts alone (``evaluation.fill_choice``);
    on for versions never priced (a COCO start, a file from elsewhere, older versions)."""
    return bool(((metrics or {}).get("fill") or {}).get("model_masks", True))


def fill_note(metrics: dict | None) -> str:
    """One line on how the Box tool fills boxes with this version, where its held-out images
    decided ('' where they did not)."""
    fill = (metrics or {}).get("fill")
    if not fill:
        return ""
    m, c = fill.get("model_seconds_per_object"), fill.get("cuts_seconds_per_object")
    if fill_uses_model(metrics):
        return (f"Box tool: this model's masks compete with the classical cuts (held-out: ~{m:.0f} s an "
                f"object with them, ~{c:.0f} s without)")
    return (f"Box tool: the classical cuts alone fill boxes; this model's masks saved nothing "
            f"on its held-out images (~{m:.0f} s an object with them, ~{c:.0f} s without)")


def version_for(project: Project, weights: str) -> ModelVersion | None:
    """The version a loaded ``weights`` is ('' or 'active': the active one; else by file)."""
    if weights in ("", "active"):
        return project.active_model()
    return next((m for m in project.models() if _same_file(m.path, weights)), None)


def _same_file(a: str, b: str) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return a == b
