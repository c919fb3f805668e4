"""Tiny-ImageNet's layout, a directory or a zip (possibly inside a top folder).

Recognised by ``wnids.txt`` beside ``train/<wnid>/images/``. Splits ``train`` and ``val``
(``val/images/`` labelled by column 2 of ``val/val_annotations.txt``, or ``val/<wnid>/images/``).
Classes are the wnids in ``wnids.txt`` order; ``words.txt`` fills
`ImageDataset.class_descriptions`.
"""

from __future__ import annotations

import numpy as np

from common.data.cache import Meta
from common.data.folders import Container, ImageFileSource, is_image, text_lines
from common.errors import invalid

__all__ = ["TinyImageNetSource"]


class TinyImageNetSource(ImageFileSource):
    """Tiny-ImageNet-200: ``wnids.txt``, ``words.txt``, ``train/<wnid>/images``, ``val/``."""

    def __init__(self, container: Container, wnids_name: str) -> None:
        self.container = container
        spec = container.spec
        root = wnids_name[: -len("wnids.txt")]
        self.root = root
        wnids = text_lines(container.read(wnids_name), spec, wnids_name)
        if not wnids or len(set(wnids)) != len(wnids):
            raise invalid("spec", spec, f"distinct wnids, one a line, in {wnids_name}")
        words: dict[str, str] = {}
        if root + "words.txt" in container.names:
            for line in text_lines(container.read(root + "words.txt"), spec, "words.txt"):
                wnid, _, text = line.partition("\t")
                words[wnid.strip()] = text.strip()
        descriptions = tuple(words.get(w, "") for w in wnids) if words else None
        self.meta = Meta(tuple(wnids), descriptions)
        known = set(wnids)
        self.members: dict[str, list[tuple[str, str]]] = {}
        val_folder: list[tuple[str, str]] = []
        val_flat: dict[str, str] = {}
        for name in container.names:
            if not name.startswith(root) or not is_image(name):
                continue
            parts = name[len(root):].split("/")
            if len(parts) == 4 and parts[0] == "train" and parts[2] == "images":
                self._add("train", name, parts[1], known, wnids_name)
            elif len(parts) == 4 and parts[0] == "val" and parts[2] == "images":
                val_folder.append((name, parts[1]))
            elif len(parts) == 3 and parts[0] == "val" and parts[1] == "images":
                val_flat[parts[2]] = name
        annotations = root + "val/val_annotations.txt"
        if val_flat and annotations in container.names:
            for line in text_lines(container.read(annotations), spec, annotations):
                columns = line.split("\t")
                if len(columns) < 2 or columns[0] not in val_flat:
                    raise invalid(
                        "spec", spec,
                        f"lines '<file>\\t<wnid>...' naming files of val/images in {annotations} "
                        f"(got {line[:60]!r})",
                    )
                self._add("val", val_flat[columns[0]], columns[1], known, annotations)
        for name, wnid in val_folder:
            self._add("val", name, wnid, known, name)
        if not self.members:
            raise invalid(
                "spec", spec, f"Tiny-ImageNet images in {root}train/<wnid>/images/ or {root}val/"
            )

    def _add(self, split: str, name: str, wnid: str, known: set[str], where: str) -> None:
        if wnid not in known:
            raise invalid("spec", self.container.spec, f"wnids listed in wnids.txt ({where} "
                                                       f"names {wnid!r})")
        self.members.setdefault(split, []).append((name, wnid))

    def splits(self) -> tuple[str, ...]:
        return tuple(s for s in ("train", "val") if s in self.members)

    def listing(self, split: str) -> tuple[list[str], np.ndarray]:
        index = {name: i for i, name in enumerate(self.meta.class_names)}
        members = self.members[split]
        if split == "train":
            members = sorted(members, key=lambda m: (index[m[1]], m[0]))
        files = [name for name, _ in members]
        return files, np.array([index[wnid] for _, wnid in members], dtype=np.int64)
