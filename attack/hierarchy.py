"""The label hierarchy that Knockoff Nets' adaptive strategy samples over.

Orekondy et al. (Knockoff Nets, CVPR 2019, Sec. 4.1.2) let a gradient bandit walk a tree whose
leaves are the transfer set's classes: at each internal node it picks a child, at the leaf it
draws an image of that class. For ImageNet-style class names (WordNet ids such as ``n01443537``,
the noun synset at byte offset 01443537 of WordNet 3.0's ``data.noun``) the tree is the WordNet
hypernym tree, read offline from Debian's ``wordnet-base`` files; for any other class names it is
flat (root -> classes).

Building the WordNet tree: every class synset is followed up its hypernym pointers (``@``, or
``@i`` for instance synsets that have no ``@``) to a synset without hypernyms (``entity``,
n00001740, in WordNet 3.0). A synset with several hypernyms keeps the FIRST ``@`` pointer of its
``data.noun`` line (WordNet lists the primary one first: dog -> canine, not domestic animal), so
each synset has one parent and the union of the paths is a tree. Paths ending at different tops
hang under a synthetic ``root``. A class whose synset is also the ancestor of another class gets
its own leaf (``<wnid>``) under that synset (renamed ``<wnid>:synset``), so every class is a leaf.
Finally chains are compressed: an internal node with a single child is replaced by that child
(entity -> physical entity -> object -> ... collapses), so every internal node but a root over a
single class offers the bandit a real choice.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import UsageError, invalid

__all__ = [
    "DEFAULT_WORDNET_DIR",
    "WORDNET_DIR_ENV",
    "Hierarchy",
    "hierarchy_for",
    "is_wnid",
    "resolve_wordnet_dir",
]

logger = logging.getLogger(__name__)

WORDNET_DIR_ENV = "MEXT_WORDNET_DIR"
DEFAULT_WORDNET_DIR = "/usr/share/wordnet"  # where Debian's wordnet-base installs WordNet 3.0
_WNID = re.compile(r"^n(\d{8})$")
_ROOT = "<root>"


def is_wnid(name: str) -> bool:
    """Whether `name` looks like an ImageNet WordNet id: ``n`` and 8 digits."""
    return bool(_WNID.match(str(name)))


def resolve_wordnet_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """The WordNet folder: `path`, else ``$MEXT_WORDNET_DIR``, else ``/usr/share/wordnet``."""
    if path is not None:
        return Path(path)
    return Path(os.environ.get(WORDNET_DIR_ENV) or DEFAULT_WORDNET_DIR)


@dataclass(frozen=True, eq=False)
class Hierarchy:
    """A rooted tree whose leaves are the classes, nodes numbered in depth-first pre-order.

    `names[i]` identifies node ``i`` (class leaves carry their class name), `parents[i]` is its
    parent (``-1`` for the root, node 0, and ``parents[i] < i`` otherwise), `leaf_classes[i]` the
    class index of a leaf and ``-1`` for internal nodes, `descriptions[i]` human words ("" when
    none), `source` says where the tree came from (``flat`` or ``wordnet:<data.noun path>``).
    Every class ``0 .. num_classes-1`` is exactly one leaf; every leaf is a class.
    """

    names: tuple[str, ...]
    parents: tuple[int, ...]
    leaf_classes: tuple[int, ...]
    descriptions: tuple[str, ...]
    source: str = "flat"
    children: tuple[tuple[int, ...], ...] = field(init=False, repr=False)
    class_leaves: tuple[int, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        n = len(self.names)
        if n < 2 or not (len(self.parents) == len(self.leaf_classes) == len(self.descriptions)
                         == n):
            raise invalid("names", f"{n} names, {len(self.parents)} parents, "
                          f"{len(self.leaf_classes)} leaf classes, {len(self.descriptions)} "
                          "descriptions", "a root and at least one leaf, one entry each")
        if self.parents[0] != -1 or any(not 0 <= p < i for i, p in enumerate(self.parents)
                                        if i > 0):
            raise invalid("parents", self.parents, "-1 for node 0 and parents[i] < i otherwise")
        children: list[list[int]] = [[] for _ in range(n)]
        for node in range(1, n):
            children[self.parents[node]].append(node)
        classes = [c for c in self.leaf_classes if c >= 0]
        if sorted(classes) != list(range(len(classes))):
            raise invalid("leaf_classes", self.leaf_classes,
                          "each class index 0 .. K-1 exactly once, -1 for internal nodes")
        for node in range(n):
            if (self.leaf_classes[node] >= 0) == bool(children[node]):
                raise invalid("leaf_classes", self.leaf_classes,
                              f"a class exactly at the leaves (node {node}, "
                              f"{self.names[node]!r}, has {len(children[node])} children)")
        leaves = [0] * len(classes)
        for node, c in enumerate(self.leaf_classes):
            if c >= 0:
                leaves[c] = node
        object.__setattr__(self, "children", tuple(tuple(c) for c in children))
        object.__setattr__(self, "class_leaves", tuple(leaves))

    # ------------------------------------------------------------------------------- queries

    @property
    def num_nodes(self) -> int:
        return len(self.names)

    @property
    def num_classes(self) -> int:
        return len(self.class_leaves)

    @property
    def class_names(self) -> tuple[str, ...]:
        """The class names in class-index order (the leaves' names)."""
        return tuple(self.names[leaf] for leaf in self.class_leaves)

    def is_leaf(self, node: int) -> bool:
        return self.leaf_classes[node] >= 0

    def path(self, class_index: int) -> tuple[int, ...]:
        """The nodes from the root down to the leaf of `class_index`."""
        node = self.class_leaves[class_index]
        nodes = [node]
        while self.parents[node] >= 0:
            node = self.parents[node]
            nodes.append(node)
        return tuple(reversed(nodes))

    def depth(self) -> int:
        """Edges on the longest root-to-leaf path."""
        return max(len(self.path(c)) for c in range(self.num_classes)) - 1

    def label(self, node: int) -> str:
        """``name (description)`` for logs."""
        text = self.descriptions[node]
        return f"{self.names[node]} ({text})" if text else self.names[node]

    def __repr__(self) -> str:
        return (f"Hierarchy(source={self.source!r}, classes={self.num_classes}, "
                f"nodes={self.num_nodes}, depth={self.depth()})")

    # -------------------------------------------------------------------------- constructors

    @classmethod
    def flat(cls, class_names: Sequence[str],
             descriptions: Sequence[str] | None = None) -> Hierarchy:
        """Root -> one leaf per class, in class order."""
        names = [str(name) for name in class_names]
        if not names:
            raise invalid("class_names", names, "at least one class")
        words = [""] * len(names) if descriptions is None else [str(d) for d in descriptions]
        if len(words) != len(names):
            raise invalid("descriptions", f"{len(words)} descriptions",
                          f"one per class ({len(names)})")
        return cls(names=(_ROOT, *names), parents=(-1, *([0] * len(names))),
                   leaf_classes=(-1, *range(len(names))), descriptions=("", *words),
                   source="flat")

    @classmethod
    def from_parents(cls, class_names: Sequence[str], parent_of: Mapping[str, str],
                     descriptions: Mapping[str, str] | None = None, *,
                     source: str = "custom") -> Hierarchy:
        """The tree made of the paths class -> parent_of[class] -> ... up to a name without a
        parent, with single-child chains compressed (see the module docstring)."""
        names = [str(name) for name in class_names]
        if not names:
            raise invalid("class_names", names, "at least one class")
        if len(set(names)) != len(names):
            raise invalid("class_names", names, "distinct names")
        kids: dict[str, list[str]] = {}  # first-seen order keeps the tree deterministic
        tops: list[str] = []
        for name in names:
            seen = {name}
            node = name
            while node in parent_of:
                up = parent_of[node]
                if up in seen:
                    raise invalid("parent_of", f"a cycle through {up!r}", "a forest")
                seen.add(up)
                below = kids.setdefault(up, [])
                if node not in below:
                    below.append(node)
                node = up
            if node not in tops:
                tops.append(node)
        class_index = {name: i for i, name in enumerate(names)}

        def inner(node: str) -> str:  # a class that is also an ancestor: rename the synset
            return f"{node}:synset" if node in kids and node in class_index else node

        tree = {inner(k): [inner(c) for c in v] for k, v in kids.items()}
        words = {str(k): str(v) for k, v in (descriptions or {}).items()}
        for name in names:
            if name in kids:
                tree[inner(name)].append(name)
                words.setdefault(inner(name), words.get(name, ""))
        tops = [inner(t) for t in tops]
        if len(tops) > 1 or tops[0] in class_index:
            root = _ROOT
            tree[root] = tops
        else:
            root = tops[0]

        def compress(node: str) -> str:
            while len(tree.get(node, ())) == 1:
                node = tree[node][0]
            return node

        top = compress(root)
        if top in class_index:  # a single class: keep a root above its leaf
            top, tree[root] = root, [top]
        order: list[tuple[str, int]] = []
        stack = [(top, -1)]
        while stack:
            node, parent = stack.pop()
            here = len(order)
            order.append((node, parent))
            stack.extend((compress(k), here) for k in reversed(tree.get(node, ())))
        return cls(
            names=tuple(node for node, _ in order),
            parents=tuple(parent for _, parent in order),
            leaf_classes=tuple(-1 if node in tree else class_index[node] for node, _ in order),
            descriptions=tuple(words.get(node, "") for node, _ in order),
            source=source,
        )

    @classmethod
    def from_wordnet(cls, wnids: Sequence[str],
                     wordnet_dir: str | os.PathLike[str] | None = None) -> Hierarchy:
        """The compressed WordNet hypernym tree over `wnids` (``n`` + noun synset offset), read
        from ``<wordnet_dir>/data.noun`` (default: ``$MEXT_WORDNET_DIR`` or
        ``/usr/share/wordnet``). `UsageError` when the file or a synset is missing."""
        path = _data_noun(wordnet_dir)
        names = [str(w) for w in wnids]
        bad = [w for w in names if not is_wnid(w)]
        if bad:
            raise invalid("wnids", bad[:3], "WordNet noun ids such as 'n01443537'")
        parent_of: dict[str, str] = {}
        words: dict[str, str] = {}
        with _NounFile(path) as nouns:
            todo = list(names)
            while todo:
                wnid = todo.pop()
                if wnid in words:
                    continue
                lemmas, hypernyms = nouns.synset(wnid[1:])
                words[wnid] = lemmas[0].replace("_", " ") if lemmas else ""
                if hypernyms:
                    parent_of[wnid] = "n" + hypernyms[0]
                    todo.append(parent_of[wnid])
        return cls.from_parents(names, parent_of, words, source=f"wordnet:{path}")


def hierarchy_for(dataset: object, *,
                  wordnet_dir: str | os.PathLike[str] | None = None) -> Hierarchy:
    """The WordNet tree when every class name of `dataset` (an object with `class_names`, such as
    `common.data.ImageDataset`, or a sequence of names) is a wnid found in WordNet's
    ``data.noun``; otherwise the flat tree. Logs which and why."""
    names = [str(n) for n in getattr(dataset, "class_names", dataset)]  # type: ignore[arg-type]
    words = getattr(dataset, "class_descriptions", None)
    if not names:
        raise invalid("dataset", names, "a dataset with at least one class")
    reason = ""
    if not all(is_wnid(n) for n in names):
        example = next(n for n in names if not is_wnid(n))
        reason = f"class names are not WordNet ids (e.g. {example!r})"
    else:
        directory = resolve_wordnet_dir(wordnet_dir)
        path = directory / "data.noun"
        if not path.is_file():
            reason = (f"no WordNet noun database at {path} (install Debian's wordnet-base or set "
                      f"{WORDNET_DIR_ENV})")
        else:
            try:
                tree = Hierarchy.from_wordnet(names, directory)
            except UsageError as err:
                reason = str(err)
            else:
                logger.info("label hierarchy: WordNet from %s: %d classes, %d nodes, depth %d",
                            path, tree.num_classes, tree.num_nodes, tree.depth())
                return tree
    tree = Hierarchy.flat(names, words)
    logger.info("label hierarchy: flat (%d classes): %s", tree.num_classes, reason)
    return tree


# ------------------------------------------------------------------------------ data.noun


def _data_noun(directory: str | os.PathLike[str] | None) -> Path:
    path = resolve_wordnet_dir(directory) / "data.noun"
    if not path.is_file():
        raise invalid("wordnet_dir", str(path.parent),
                      f"a folder holding WordNet 3.0's data.noun (Debian package wordnet-base; "
                      f"or set {WORDNET_DIR_ENV})")
    return path


class _NounFile:
    """Random access to ``data.noun`` lines: a synset's offset is its line's byte offset. Files
    that break that rule (hand-made ones) are indexed by one scan instead."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path.open("rb")
        self._index: dict[str, bytes] | None = None

    def __enter__(self) -> _NounFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()

    def _line(self, offset: str) -> bytes | None:
        if self._index is None:
            self._file.seek(int(offset))
            line = self._file.readline()
            if line.startswith(offset.encode() + b" "):
                return line
            self._file.seek(0)
            self._index = {}
            for raw in self._file:
                if raw[:1].isdigit():
                    self._index[raw.split(b" ", 1)[0].decode()] = raw
        return self._index.get(offset)

    def synset(self, offset: str) -> tuple[list[str], list[str]]:
        """(lemmas, hypernym offsets: the ``@`` pointers in file order, else the ``@i`` ones)."""
        line = self._line(offset)
        if line is None:
            raise invalid("wnids", f"n{offset}", f"noun synsets present in {self.path}")
        fields = line.decode("utf-8", "replace").split(" | ", 1)[0].split()
        try:
            count = int(fields[3], 16)
            lemmas = fields[4:4 + 2 * count:2]
            at = 4 + 2 * count
            pointers = [fields[at + 1 + 4 * i: at + 5 + 4 * i] for i in range(int(fields[at]))]
        except (IndexError, ValueError) as err:
            raise UsageError(f"{self.path}: unreadable synset line for {offset}: {err}") from None
        hyper = [p[1] for p in pointers if len(p) == 4 and p[0] == "@" and p[2] == "n"]
        if not hyper:
            hyper = [p[1] for p in pointers if len(p) == 4 and p[0] == "@i" and p[2] == "n"]
        return lemmas, hyper

