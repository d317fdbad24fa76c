"""Plain, frozen dataclasses for what a person labels: categories, images, instances.

Boxes are ``(x1, y1, x2, y2)`` in pixels of the image as displayed (after EXIF rotation).
COCO's ``[x, y, w, h]`` appears only at the file boundary (``detector.coco``).
Masks are COCO RLE dicts ``{"size": [h, w], "counts": str}`` (compressed, column-major).
Keypoints are ``K`` triples ``(x, y, v)`` with COCO visibility: 0 unlabelled, 1 occluded, 2 visible.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Any

Box = tuple[float, float, float, float]
Keypoint = tuple[float, float, int]
Rle = dict[str, Any]

MODEL = "model"
PERSON = "person"


class ImageStatus(str, enum.Enum):
    """Where an image is in the labeling workflow."""

    NEW = "new"
    PREDICTED = "predicted"
    IN_REVIEW = "in review"
    REVIEWED = "reviewed"
    UNREADABLE = "unreadable"


@dataclass(frozen=True)
class Category:
    """A class the person labels; keypoint names and a 1-based skeleton are optional."""

    name: str
    color: str = "#e6194b"
    keypoints: tuple[str, ...] = ()
    skeleton: tuple[tuple[int, int], ...] = ()
    id: int | None = None

    @property
    def has_keypoints(self) -> bool:
        return bool(self.keypoints)

    def flip_permutation(self) -> list[int]:
        """Index permutation that swaps left/right keypoints for a horizontal flip."""
        names = list(self.keypoints)
        perm = list(range(len(names)))
        for i, n in enumerate(names):
            for a, b in (("left", "right"), ("right", "left"), ("Left", "Right"), ("Right", "Left")):
                if a in n:
                    other = n.replace(a, b)
                    if other in names:
                        perm[i] = names.index(other)
                    break
        return perm


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """One image file under the project's folder (``path`` relative, with ``/`` separators)."""

    path: str
    width: int | None = None
    height: int | None = None
    status: ImageStatus = ImageStatus.NEW
    reason: str | None = None
    id: int | None = None
    uncertainty: float | None = None  # detector.active, stored with the last prediction
    predicted_by: str | None = None  # the model that made the last prediction (inference.model_identity)

    @property
    def readable(self) -> bool:
        return self.status is not ImageStatus.UNREADABLE


@dataclass(frozen=True)
class Instance:
    """One labelled object: category, box, optional mask and keypoints, and who made it."""

    category_id: int
    box: Box
    mask: Rle | None = None
    keypoints: tuple[Keypoint, ...] = ()
    score: float | None = None
    source: str = PERSON
    changed_by: str = PERSON
    changed_at: str = ""
    accepted: bool = False
    crowd: bool = False
    image_id: int | None = None
    id: int | None = None

    @property
    def touched_by_person(self) -> bool:
        """True when a person made, edited or accepted it: predictions never replace it."""
        return self.changed_by != MODEL or self.accepted

    @property
    def slider_score(self) -> float | None:
        """The score the confidence slider compares: an untouched prediction's; None (always
        shown) for a person's instance or an unscored one."""
        return None if self.touched_by_person else self.score

    def shown_at(self, min_score: float) -> bool:
        """The confidence slider's one rule: untouched predictions scored below it are hidden."""
        s = self.slider_score
        return s is None or s >= min_score

    def with_(self, **changes: Any) -> Instance:
        return replace(self, **changes)


@dataclass(frozen=True)
class Prediction:
    """What the model says about one image, for the request ``request_id``."""

    request_id: int
    image_id: int | None
    path: str
    width: int
    height: int
    instances: tuple[Instance, ...] = ()
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
