"""Image files in a directory or a zip archive: the image-folder source and its shared base.

An image folder is ``[<split>/]<class>/<image>``: with split folders (``train/``, ``test/``, ...)
each is a split; without, the whole folder is the split ``all``. Classes are the sorted
class-folder names of all splits together. One top folder that is not itself a split or class
folder (``cifar10/train/cat/1.png``) is skipped. Hidden files and ``__MACOSX`` are ignored.
`ImageFileSource` is what every source of encoded image files shares (Tiny-ImageNet's layout
too): it lists a split's files with their labels, and decodes all of them or a chosen few.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np

from common.data.cache import Meta, Part
from common.data.imaging import CHUNK, decode_bytes, decode_stream
from common.data.spec import IMAGE_SUFFIXES, SINGLE_SPLIT, SPLIT_FOLDER_NAMES, Size
from common.errors import invalid

__all__ = ["Container", "FolderSource", "ImageFileSource", "hidden", "is_image", "text_lines"]


class Container:
    """Files of a directory or a zip archive, named by posix paths relative to its root."""

    def __init__(self, spec: str, path: Path) -> None:
        self.spec = spec
        self.path = path
        self._zip: zipfile.ZipFile | None = None
        if path.is_dir():
            self.names = []
            for folder, subfolders, files in os.walk(path):
                subfolders.sort()
                rel = Path(folder).relative_to(path).as_posix()
                self.names += [name if rel == "." else f"{rel}/{name}" for name in sorted(files)]
        else:
            try:
                self._zip = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError) as err:
                raise invalid("spec", spec, f"a readable zip archive ({err})") from err
            self.names = [info.filename for info in self._zip.infolist() if not info.is_dir()]
        self.names = [name for name in self.names if not hidden(name)]

    def read(self, name: str) -> bytes:
        """The bytes of the file `name`; an unreadable one is a `UsageError` about the spec."""
        try:
            if self._zip is not None:
                return self._zip.read(name)
            return (self.path / name).read_bytes()
        except (OSError, KeyError, zipfile.BadZipFile) as err:
            raise invalid("spec", self.spec, f"a readable file {name!r} ({err})") from err

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


def hidden(name: str) -> bool:
    """A hidden file or folder, or macOS' resource forks in a zip."""
    return any(part.startswith((".", "__MACOSX")) for part in name.split("/"))


def is_image(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES


def text_lines(data: bytes, spec: str, name: str) -> list[str]:
    """The non-blank lines of a UTF-8 text file of the source, stripped."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise invalid("spec", spec, f"UTF-8 text in {name} ({err})") from err
    return [line.strip() for line in text.splitlines() if line.strip()]


class ImageFileSource:
    """A source of encoded images in a `Container`: `listing` says a split's files and labels."""

    cacheable = True
    container: Container
    meta: Meta

    def splits(self) -> tuple[str, ...]:
        raise NotImplementedError

    def listing(self, split: str) -> tuple[list[str], np.ndarray]:
        """The files of `split` in their order and their labels (indices into the classes)."""
        raise NotImplementedError

    def build(
        self, split: str, size: Size | None, channels: int | None,
        index: np.ndarray | None = None,
    ) -> dict[str, Part]:
        """`split` decoded (only the files at positions `index`, in that order, if given)."""
        files, labels = self.listing(split)
        if index is not None:
            files, labels = [files[i] for i in index], labels[index]
        return {split: Part(decode_files(self.container, files, size, channels), labels)}

    def close(self) -> None:
        self.container.close()


def decode_files(
    container: Container, files: list[str], size: Size | None, channels: int | None
) -> np.ndarray:
    """The images `files` of `container`, read in order and decoded on the thread pool."""
    chunks = (
        [(name, container.read(name)) for name in files[i:i + CHUNK]]
        for i in range(0, len(files), CHUNK)
    )
    return decode_stream(
        lambda item: decode_bytes(item[1], size, channels, container.spec, item[0]), chunks,
        len(files), size, channels, container.spec)


class FolderSource(ImageFileSource):
    """``[<split>/]<class>/<image>`` in a directory or zip."""

    def __init__(self, container: Container) -> None:
        self.container = container
        spec = container.spec
        images = [name for name in container.names if is_image(name)]
        if not images:
            raise invalid(
                "spec", spec,
                "an image folder or zip ([<split>/]<class>/<image>), a Tiny-ImageNet folder, "
                "or .npz/.npy/.tar arrays (found no image files)",
            )
        paths = [name.split("/") for name in images]
        self.prefix = ""
        while (
            len({p[0] for p in paths}) == 1
            and min(len(p) for p in paths) >= 3
            and paths[0][0].lower() not in SPLIT_FOLDER_NAMES
        ):
            self.prefix += paths[0][0] + "/"
            paths = [p[1:] for p in paths]
        depths = {len(p) for p in paths}
        if depths == {2}:
            self.members = {SINGLE_SPLIT: [("/".join(p), p[0]) for p in paths]}
        elif depths == {3}:
            self.members = {}
            for p in paths:
                self.members.setdefault(p[0], []).append(("/".join(p[1:]), p[1]))
        else:
            raise invalid(
                "spec", spec,
                "images all at <class>/<image> or all at <split>/<class>/<image> "
                f"(found images at depths {sorted(d - 1 for d in depths)})",
            )
        self.meta = Meta(tuple(sorted({cls for m in self.members.values() for _, cls in m})))

    def splits(self) -> tuple[str, ...]:
        return tuple(self.members)

    def listing(self, split: str) -> tuple[list[str], np.ndarray]:
        index = {name: i for i, name in enumerate(self.meta.class_names)}
        members = sorted(self.members[split])
        prefix = self.prefix + ("" if split == SINGLE_SPLIT else split + "/")
        files = [prefix + rel for rel, _ in members]
        return files, np.array([index[cls] for _, cls in members], dtype=np.int64)
