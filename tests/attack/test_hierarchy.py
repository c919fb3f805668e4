"""Tests for attack.hierarchy: the flat tree, the WordNet tree from a hand-made ``data.noun``
(first-hypernym rule, instance hypernyms, chain compression, a class that is also an ancestor,
both the byte-offset and the scanning reader), `hierarchy_for`'s choice, validation, and the real
WordNet tree over Tiny-ImageNet's 200 classes when the files are there."""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path

import pytest

from attack.hierarchy import Hierarchy, hierarchy_for, is_wnid, resolve_wordnet_dir
from common.errors import UsageError

SHARED = Path(
    os.environ.get(
        "MEXT_SHARED_DATA", Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
    )
)
TINY = SHARED / "tinyimagenet200_val10k_train50pc.zip"

# symbol: (lemmas, pointers [(pointer symbol, target symbol)])
SYNSETS = {
    "E": (["entity"], []),
    "P": (["physical_entity"], [("@", "E")]),
    "O": (["object", "physical_object"], [("@", "P"), ("~", "A")]),
    "A": (["animal"], [("@", "O")]),
    "K": (["canine"], [("@", "A")]),
    "T": (["domestic_animal"], [("@", "A")]),
    "D": (["dog", "domestic_dog"], [("@", "K"), ("@", "T"), ("#m", "A")]),
    "F": (["feline"], [("@", "A")]),
    "C": (["cat"], [("@", "F")]),
    "V": (["vehicle"], [("@", "O")]),
    "R": (["car"], [("@", "V")]),
    "U": (["truck"], [("@", "V")]),
    "L": (["Lassie"], [("@i", "K")]),
}
HEADER = "  1 This software and database is being provided to you, the LICENSEE, by  \n"


def write_data_noun(folder: Path, synsets=SYNSETS, *, true_offsets: bool = True) -> dict:
    """A WordNet-format data.noun; returns symbol -> wnid. With `true_offsets` each synset's
    offset is its line's byte offset, as in the real file; otherwise offsets are arbitrary."""
    symbols = list(synsets)

    def line(symbol: str, offsets: dict) -> str:
        lemmas, pointers = synsets[symbol]
        words = " ".join(f"{w} 0" for w in lemmas)
        ptrs = " ".join(f"{s} {offsets[t]:08d} n 0000" for s, t in pointers)
        return (f"{offsets[symbol]:08d} 03 n {len(lemmas):02x} {words} {len(pointers):03d}"
                f"{' ' + ptrs if ptrs else ''} | a gloss about {symbol}  \n")

    if true_offsets:
        offsets = dict.fromkeys(symbols, 0)
        position = len(HEADER.encode())
        for symbol in symbols:  # every offset has 8 digits: lengths do not depend on values
            offsets[symbol] = position
            position += len(line(symbol, offsets).encode())
    else:
        offsets = {symbol: 1000 + 7 * i for i, symbol in enumerate(symbols)}
    folder.mkdir(parents=True, exist_ok=True)
    text = HEADER + "".join(line(symbol, offsets) for symbol in symbols)
    (folder / "data.noun").write_text(text)
    return {symbol: f"n{offsets[symbol]:08d}" for symbol in symbols}


def test_flat_tree():
    tree = Hierarchy.flat(["cat", "dog", "car"], ["a cat", "a dog", "a car"])
    assert tree.names == ("<root>", "cat", "dog", "car")
    assert tree.parents == (-1, 0, 0, 0)
    assert tree.children[0] == (1, 2, 3)
    assert tree.class_names == ("cat", "dog", "car")
    assert tree.path(2) == (0, 3)
    assert tree.depth() == 1 and tree.num_classes == 3 and tree.source == "flat"
    assert tree.label(1) == "cat (a cat)"
    single = Hierarchy.flat(["only"])
    assert single.children[0] == (1,) and single.class_leaves == (1,)


@pytest.mark.parametrize("true_offsets", [True, False])
def test_wordnet_tree_compressed_with_first_hypernym(tmp_path, true_offsets):
    wnid = write_data_noun(tmp_path, true_offsets=true_offsets)
    classes = [wnid[s] for s in ("D", "C", "R", "U", "L")]
    tree = Hierarchy.from_wordnet(classes, tmp_path)
    # entity -> physical entity -> object is a chain: the root is `object`; feline has only cat.
    expected = ["O", "A", "K", "D", "L", "C", "V", "R", "U"]
    assert tree.names == tuple(wnid[s] for s in expected)
    parent = {"O": None, "A": "O", "K": "A", "D": "K", "L": "K", "C": "A", "V": "O", "R": "V",
              "U": "V"}
    assert tree.parents == tuple(
        -1 if parent[s] is None else expected.index(parent[s]) for s in expected)
    assert tree.leaf_classes == (-1, -1, -1, 0, 4, 1, -1, 2, 3)
    assert tree.class_names == tuple(classes)
    assert wnid["T"] not in tree.names  # dog keeps its first "@" (canine), not domestic animal
    assert wnid["L"] in tree.names  # an instance synset climbs through "@i"
    assert tree.descriptions[0] == "object" and tree.label(3) == f"{wnid['D']} (dog)"
    assert tree.depth() == 3 and tree.source == f"wordnet:{tmp_path / 'data.noun'}"
    assert all(len(kids) >= 2 for node, kids in enumerate(tree.children) if not tree.is_leaf(node))


def test_wordnet_first_pointer_decides(tmp_path):
    synsets = dict(SYNSETS)
    synsets["D"] = (["dog"], [("@", "T"), ("@", "K")])
    wnid = write_data_noun(tmp_path, synsets)
    tree = Hierarchy.from_wordnet([wnid["D"], wnid["C"], wnid["L"]], tmp_path)
    # dog now hangs under domestic animal, so canine keeps only Lassie: both chains compress and
    # animal chooses directly among dog, cat and Lassie (canine stays when dog is under it).
    assert tree.names == tuple(wnid[s] for s in ("A", "D", "C", "L"))
    assert tree.parents == (-1, 0, 0, 0)
    synsets["T"] = (["domestic_animal"], [("@", "A")])
    synsets["W"] = (["pig"], [("@", "T")])
    wnid = write_data_noun(tmp_path, synsets)
    tree = Hierarchy.from_wordnet([wnid["D"], wnid["W"], wnid["L"]], tmp_path)
    assert [tree.names[n] for n in tree.path(0)] == [wnid["A"], wnid["T"], wnid["D"]]


def test_class_that_is_an_ancestor_gets_its_own_leaf(tmp_path):
    wnid = write_data_noun(tmp_path)
    tree = Hierarchy.from_wordnet([wnid["K"], wnid["D"]], tmp_path)
    assert tree.names == (f"{wnid['K']}:synset", wnid["D"], wnid["K"])
    assert tree.leaf_classes == (-1, 1, 0)
    assert tree.descriptions == ("canine", "dog", "canine")


def test_single_class_keeps_a_root(tmp_path):
    wnid = write_data_noun(tmp_path)
    tree = Hierarchy.from_wordnet([wnid["C"]], tmp_path)
    assert tree.names == (wnid["E"], wnid["C"]) and tree.parents == (-1, 0)
    lonely = Hierarchy.from_parents(["x"], {})
    assert lonely.names == ("<root>", "x") and lonely.leaf_classes == (-1, 0)


def test_from_parents_forest_gets_a_synthetic_root():
    tree = Hierarchy.from_parents(["a", "b", "c"], {"a": "top1", "b": "top1", "c": "top2"})
    assert tree.names == ("<root>", "top1", "a", "b", "c")
    assert tree.parents == (-1, 0, 1, 1, 0)
    with pytest.raises(UsageError, match="parent_of.*cycle"):
        Hierarchy.from_parents(["a"], {"a": "b", "b": "a"})
    with pytest.raises(UsageError, match="distinct"):
        Hierarchy.from_parents(["a", "a"], {})


def test_wordnet_errors(tmp_path):
    with pytest.raises(UsageError, match="wordnet_dir.*wordnet-base"):
        Hierarchy.from_wordnet(["n00000001"], tmp_path / "missing")
    wnid = write_data_noun(tmp_path)
    with pytest.raises(UsageError, match="wnids.*n99999999.*noun synsets present"):
        Hierarchy.from_wordnet([wnid["D"], "n99999999"], tmp_path)
    with pytest.raises(UsageError, match="wnids.*'dog'"):
        Hierarchy.from_wordnet(["dog"], tmp_path)


def test_hierarchy_validation():
    with pytest.raises(UsageError, match="parents"):
        Hierarchy(names=("r", "a"), parents=(-1, 1), leaf_classes=(-1, 0), descriptions=("", ""))
    with pytest.raises(UsageError, match="leaf_classes"):
        Hierarchy(names=("r", "a", "b"), parents=(-1, 0, 1), leaf_classes=(-1, 0, 1),
                  descriptions=("", "", ""))
    with pytest.raises(UsageError, match="leaf_classes"):
        Hierarchy(names=("r", "a"), parents=(-1, 0), leaf_classes=(-1, 1), descriptions=("", ""))
    with pytest.raises(UsageError, match="class_names"):
        Hierarchy.flat([])


def test_hierarchy_for_chooses_and_says_why(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="attack.hierarchy")
    wnid = write_data_noun(tmp_path / "wn")
    monkeypatch.setenv("MEXT_WORDNET_DIR", str(tmp_path / "wn"))
    assert resolve_wordnet_dir() == tmp_path / "wn"
    tree = hierarchy_for([wnid["D"], wnid["C"]])
    assert tree.source.startswith("wordnet:") and tree.num_classes == 2
    assert "WordNet" in caplog.text

    class Dataset:  # what common.data.ImageDataset offers
        class_names = ("cat", "dog")
        class_descriptions = ("a cat", "a dog")

    caplog.clear()
    flat = hierarchy_for(Dataset())
    assert flat.source == "flat" and flat.descriptions[1:] == ("a cat", "a dog")
    assert "not WordNet ids (e.g. 'cat')" in caplog.text

    caplog.clear()
    flat = hierarchy_for([wnid["D"]], wordnet_dir=tmp_path / "nowhere")
    assert flat.source == "flat" and "wordnet-base" in caplog.text

    caplog.clear()
    flat = hierarchy_for([wnid["D"], "n99999999"])
    assert flat.source == "flat" and "n99999999" in caplog.text
    assert is_wnid("n01443537") and not is_wnid("n0144353") and not is_wnid("cat")


@pytest.mark.realdata
@pytest.mark.skipif(not TINY.is_file(), reason=f"needs {TINY} (the shared data folder)")
@pytest.mark.skipif(not (resolve_wordnet_dir() / "data.noun").is_file(),
                    reason="needs WordNet's data.noun (Debian package wordnet-base)")
def test_real_wordnet_tree_for_tiny_imagenet():
    with zipfile.ZipFile(TINY) as archive:
        name = next(n for n in archive.namelist() if n.endswith("wnids.txt"))
        wnids = archive.read(name).decode().split()
    assert len(wnids) == 200
    tree = hierarchy_for(wnids)
    assert tree.source.startswith("wordnet:")
    assert tree.class_names == tuple(wnids)
    assert all(len(kids) >= 2 for node, kids in enumerate(tree.children) if not tree.is_leaf(node))
    assert tree.num_nodes < 2 * 200 and 5 <= tree.depth() <= 15
    egyptian_cat = tree.path(wnids.index("n02124075"))
    assert [tree.descriptions[n] for n in egyptian_cat][-3:] == ["cat", "domestic cat",
                                                                 "Egyptian cat"]
