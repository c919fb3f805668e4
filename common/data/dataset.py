"""`ImageDataset`: uint8 images with integer labels and class names, as every package reads them.

The type the data layer returns (`common.data.load_dataset`) and the attacks, the detector and
victim training consume; it checks its arrays once, when it is made, so that no consumer has to.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from common.errors import invalid

__all__ = ["ImageDataset"]


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """Images with integer labels, as every package consumes them.

    `images` is uint8 ``[N, H, W, C]``; `labels` int64 ``[N]`` indexes `class_names`;
    `source` names the spec and split; `class_descriptions` (Tiny-ImageNet's ``words.txt``)
    is aligned with `class_names` when the source has them.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    source: str
    class_descriptions: tuple[str, ...] | None = field(default=None)

    def __post_init__(self) -> None:
        images = np.asarray(self.images)
        labels = np.asarray(self.labels)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise invalid(
                "images", f"{images.dtype} array of shape {images.shape}",
                "a uint8 array of shape [N, H, W, 1 or 3]",
            )
        if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(
            labels.dtype, np.integer
        ):
            raise invalid(
                "labels", f"{labels.dtype} array of shape {labels.shape}",
                f"an integer array of shape [{len(images)}]",
            )
        names = tuple(str(name) for name in self.class_names)
        if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
            raise invalid(
                "labels", f"values in [{labels.min()}, {labels.max()}]",
                f"indices into the {len(names)} class names",
            )
        descriptions = self.class_descriptions
        if descriptions is not None:
            descriptions = tuple(str(text) for text in descriptions)
            if len(descriptions) != len(names):
                raise invalid(
                    "class_descriptions", f"{len(descriptions)} descriptions",
                    f"one per class name ({len(names)})",
                )
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "labels", labels.astype(np.int64, copy=False))
        object.__setattr__(self, "class_names", names)
        object.__setattr__(self, "class_descriptions", descriptions)

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return (
            f"ImageDataset(source={self.source!r}, images={len(self)}x"
            f"{'x'.join(map(str, self.image_shape))}, classes={self.num_classes})"
        )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of every image."""
        return tuple(int(d) for d in self.images.shape[1:])  # type: ignore[return-value]

    def class_counts(self) -> np.ndarray:
        """Number of images per class, ``[num_classes]``."""
        return np.bincount(self.labels, minlength=self.num_classes)

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageDataset:
        """The images at `indices` (integer positions or a boolean mask), same classes."""
        index = np.asarray(indices)
        if index.dtype != bool and not np.issubdtype(index.dtype, np.integer):
            if index.size:
                raise invalid("indices", f"{index.dtype} array", "integer positions or a mask")
            index = index.astype(np.int64)
        return ImageDataset(
            images=self.images[index],
            labels=self.labels[index],
            class_names=self.class_names,
            source=self.source,
            class_descriptions=self.class_descriptions,
        )
