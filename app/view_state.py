"""What is on screen and how it is shown, in one Qt-free object that the canvas, the editor, the
docks and the actions all read and write: no widget keeps its own copy."""

from __future__ import annotations

from dataclasses import dataclass, field

from detector.domain import Instance


@dataclass
class ViewState:
    image_id: int | None = None  # the image the person asked for (shown once it is decoded)
    min_score: float = 0.0  # the confidence slider: untouched predictions below it are hidden
    hidden_ids: set[int] = field(default_factory=set)  # unticked in the Instances dock
    hidden_categories: set[int] = field(default_factory=set)  # unticked in the Categories dock
    current_category: int | None = None  # what a new box, polygon or painted mask becomes
    brush_radius: float = 8.0  # image pixels
    auto_contrast: bool = True  # images stretched to the screen's range (the project's choice)

    def is_shown(self, inst: Instance) -> bool:
        """Whether ``inst`` is drawn: not hidden by hand, and a person's or above the slider."""
        if inst.id in self.hidden_ids or inst.category_id in self.hidden_categories:
            return False
        return inst.shown_at(self.min_score)
