"""Tests for common.data: every spec form, split selection, transforms, class exclusion, limits,
sampling before decoding, the on-disk cache and error messages (tensorflow-datasets: in
test_data_tfds.py)."""

from __future__ import annotations

import io
import json
import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import common.data as data
from common.data import ImageDataset, folders, imaging, load_dataset, split_names
from common.errors import UsageError

SHARED = Path(
    os.environ.get(
        "MEXT_SHARED_DATA", Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
    )
)


@pytest.fixture(autouse=True)
def _isolated(request, tmp_path_factory, monkeypatch):
    """Unit tests cache into a fresh folder and never go online; realdata tests keep the user's
    cache so that repeated runs stay fast."""
    if request.node.get_closest_marker("realdata") is None:
        monkeypatch.setenv("MEXT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("MEXT_OFFLINE", "1")


def _colour(seed: int, size: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _encode(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def _write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    return root


def _write_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return path


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.fixture
def pixels() -> dict[str, np.ndarray]:
    """Three classes, lossless PNG pixels by file name."""
    return {f"{cls}/{i}.png": _colour(10 * c + i) for c, cls in enumerate("bca") for i in range(2)}


@pytest.fixture
def flat_folder(tmp_path, pixels) -> Path:
    return _write_tree(tmp_path / "flat", {k: _encode(v) for k, v in pixels.items()})


@pytest.fixture
def split_zip(tmp_path) -> Path:
    files = {f"top/train/{c}/{i}.jpg": _encode(_colour(i), "JPEG") for c in "xyz" for i in (1, 2)}
    files.update({f"top/test/{c}/3.jpg": _encode(_colour(3), "JPEG") for c in "xy"})
    files["top/README.txt"] = b"not an image"
    files["__MACOSX/top/train/x/._1.jpg"] = b"resource fork"
    return _write_zip(tmp_path / "splits.zip", files)


# ---------------------------------------------------------------------------------- image folders


def test_folder_without_splits_is_one_split_all(flat_folder, pixels):
    ds = load_dataset(str(flat_folder))
    assert isinstance(ds, ImageDataset)
    assert ds.class_names == ("a", "b", "c")
    assert ds.num_classes == 3 and len(ds) == 6 and ds.image_shape == (8, 8, 3)
    assert ds.images.dtype == np.uint8 and ds.labels.dtype == np.int64
    assert ds.labels.tolist() == [0, 0, 1, 1, 2, 2]
    np.testing.assert_array_equal(ds.images[0], pixels["a/0.png"])
    np.testing.assert_array_equal(ds.images[5], pixels["c/1.png"])
    everything = load_dataset(str(flat_folder), "all")
    np.testing.assert_array_equal(everything.images, ds.images)
    assert split_names(str(flat_folder)) == ("all",)
    assert ds.source == f"{flat_folder}:train"


def test_zip_with_split_folders_and_a_top_folder(split_zip):
    assert split_names(str(split_zip)) == ("train", "test")
    train = load_dataset(str(split_zip), "train")
    test = load_dataset(str(split_zip), "test")
    assert train.class_names == test.class_names == ("x", "y", "z")
    assert len(train) == 6 and len(test) == 2
    assert test.labels.tolist() == [0, 1]
    both = load_dataset(str(split_zip), "test+train")
    assert len(both) == 8 and both.labels.tolist() == [0, 1, 0, 0, 1, 1, 2, 2]
    np.testing.assert_array_equal(both.images[:2], test.images)
    np.testing.assert_array_equal(both.images[2:], train.images)


def test_folder_with_split_folders_as_directory(tmp_path):
    files = {f"{s}/{c}/{i}.png": _encode(_colour(i)) for s in ("train", "val") for c in "pq"
             for i in range(3)}
    root = _write_tree(tmp_path / "set", files)
    assert split_names(str(root)) == ("train", "val")
    assert len(load_dataset(str(root), "val")) == 6
    with pytest.raises(UsageError, match=r"`split`.*'nope'.*'train', 'val'"):
        load_dataset(str(root), "nope")


def test_grey_images_keep_one_channel_and_convert_on_request(tmp_path):
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
    root = _write_tree(tmp_path / "grey", {f"{c}/0.png": _encode(grey) for c in "ab"})
    ds = load_dataset(str(root))
    assert ds.image_shape == (8, 8, 1)
    np.testing.assert_array_equal(ds.images[0, ..., 0], grey)
    rgb = load_dataset(str(root), channels=3)
    assert rgb.image_shape == (8, 8, 3)
    np.testing.assert_array_equal(rgb.images[0], np.repeat(grey[..., None], 3, axis=-1))


def test_mixed_grey_and_colour_images_become_rgb(tmp_path):
    grey = np.full((8, 8), 7, dtype=np.uint8)
    root = _write_tree(
        tmp_path / "mixed", {"a/0.png": _encode(grey), "b/0.png": _encode(_colour(1))}
    )
    ds = load_dataset(str(root))
    assert ds.image_shape == (8, 8, 3)
    assert (ds.images[0] == 7).all()


def test_channels_one_uses_luma(tmp_path):
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255
    root = _write_tree(tmp_path / "red", {"a/0.png": _encode(red), "b/0.png": _encode(red)})
    ds = load_dataset(str(root), channels=1)
    assert ds.image_shape == (8, 8, 1)
    assert (ds.images == 76).all()  # ITU-R 601: 0.299 * 255


def test_resize_square_and_rectangular(flat_folder):
    assert load_dataset(str(flat_folder), image_size=4).image_shape == (4, 4, 3)
    assert load_dataset(str(flat_folder), image_size=(4, 6)).image_shape == (4, 6, 3)
    assert load_dataset(str(flat_folder), image_size=[16, 12]).image_shape == (16, 12, 3)


def test_resize_is_antialiased(tmp_path):
    stripes = np.zeros((8, 8, 3), np.uint8)
    stripes[:, ::2] = 255  # alternate black and white columns average to grey, not to one colour
    root = _write_tree(tmp_path / "s", {"a/0.png": _encode(stripes), "b/0.png": _encode(stripes)})
    small = load_dataset(str(root), image_size=2).images
    assert np.all(np.abs(small.astype(int) - 128) < 40)


def test_images_of_different_sizes_need_image_size(tmp_path):
    root = _write_tree(
        tmp_path / "sizes", {"a/0.png": _encode(_colour(0, 8)), "b/0.png": _encode(_colour(1, 6))}
    )
    with pytest.raises(UsageError, match=r"`image_size`.*differ in size"):
        load_dataset(str(root))
    assert load_dataset(str(root), image_size=8).image_shape == (8, 8, 3)


def test_images_at_mixed_depths_are_rejected(tmp_path):
    root = _write_tree(
        tmp_path / "bad", {"a/0.png": _encode(_colour(0)), "train/b/0.png": _encode(_colour(1))}
    )
    with pytest.raises(UsageError, match=r"`spec`.*depths"):
        load_dataset(str(root))


def test_unreadable_image_names_the_file(tmp_path):
    root = _write_tree(tmp_path / "broken", {"a/0.png": _encode(_colour(0)), "b/1.png": b"junk"})
    with pytest.raises(UsageError, match=r"`spec`.*'b/1.png' cannot be decoded"):
        load_dataset(str(root))


def test_folder_without_images_is_rejected(tmp_path):
    root = _write_tree(tmp_path / "empty", {"notes.txt": b"hello"})
    with pytest.raises(UsageError, match=r"`spec`.*found no image files"):
        load_dataset(str(root))


def test_corrupt_zip_is_a_usage_error(tmp_path):
    path = tmp_path / "broken.zip"
    path.write_bytes(b"PK not really")
    with pytest.raises(UsageError, match=r"`spec`.*zip"):
        load_dataset(str(path))


# ---------------------------------------------------------------------------------- Tiny-ImageNet


WNIDS = ("n002", "n001", "n003")


@pytest.fixture
def tiny_zip(tmp_path) -> Path:
    root = "tiny-imagenet-200/"
    files = {
        root + "wnids.txt": "\n".join(WNIDS).encode() + b"\n",
        root + "words.txt": b"n001\tcat\nn002\tdog, hound\nn003\tcar\nn999\tunused\n",
    }
    for c, wnid in enumerate(WNIDS):
        for i in range(2):
            image = _encode(_colour(c * 2 + i), "JPEG")
            files[f"{root}train/{wnid}/images/{wnid}_{i}.JPEG"] = image
        files[f"{root}train/{wnid}/{wnid}_boxes.txt"] = b"boxes"
    grey = np.full((8, 8), 90, np.uint8)  # Tiny-ImageNet holds some grey JPEGs among RGB ones
    files[root + "val/images/val_0.JPEG"] = _encode(grey, "JPEG")
    files[root + "val/images/val_1.JPEG"] = _encode(_colour(9), "JPEG")
    files[root + "val/val_annotations.txt"] = (
        b"val_0.JPEG\tn003\t0\t0\t8\t8\nval_1.JPEG\tn002\t1\t1\t7\t7\n"
    )
    return _write_zip(tmp_path / "tiny.zip", files)


def test_tiny_imagenet_splits_classes_and_descriptions(tiny_zip):
    assert split_names(str(tiny_zip)) == ("train", "val")
    train = load_dataset(str(tiny_zip), "train")
    assert train.class_names == WNIDS
    assert train.class_descriptions == ("dog, hound", "cat", "car")
    assert train.labels.tolist() == [0, 0, 1, 1, 2, 2]
    val = load_dataset(str(tiny_zip), "val")
    assert val.labels.tolist() == [2, 0]
    assert val.image_shape == (8, 8, 3)
    assert np.abs(val.images[0].astype(int) - 90).max() <= 3  # grey JPEG copied to RGB
    both = load_dataset(str(tiny_zip), "train+val")
    assert len(both) == 8 and both.labels[-2:].tolist() == [2, 0]


def test_tiny_imagenet_folder_with_val_class_folders(tmp_path):
    files = {"wnids.txt": b"n1\nn2\n"}
    for wnid in ("n1", "n2"):
        files[f"train/{wnid}/images/a.png"] = _encode(_colour(1))
        files[f"val/{wnid}/images/b.png"] = _encode(_colour(2))
    root = _write_tree(tmp_path / "tiny", files)
    val = load_dataset(str(root), "val")
    assert val.class_names == ("n1", "n2") and val.labels.tolist() == [0, 1]
    assert val.class_descriptions is None


def test_tiny_imagenet_exclusion_reindexes_labels_and_descriptions(tiny_zip, tmp_path):
    listing = tmp_path / "overlap.txt"
    listing.write_text("# classes shared with the victim\n\nn001\n  n002  # trailing comment\n")
    ds = load_dataset(str(tiny_zip), "train+val", exclude_classes=listing)
    assert ds.class_names == ("n003",)
    assert ds.class_descriptions == ("car",)
    assert ds.labels.tolist() == [0, 0, 0]
    same = load_dataset(str(tiny_zip), "train+val", exclude_classes=["n001", "n002"])
    np.testing.assert_array_equal(same.images, ds.images)


def test_tiny_imagenet_unknown_wnid_in_annotations(tmp_path):
    files = {
        "wnids.txt": b"n1\n",
        "train/n1/images/a.png": _encode(_colour(0)),
        "val/images/v.png": _encode(_colour(1)),
        "val/val_annotations.txt": b"v.png\tn7\n",
    }
    with pytest.raises(UsageError, match=r"`spec`.*'n7'"):
        load_dataset(str(_write_tree(tmp_path / "t", files)), "val")


# ------------------------------------------------------------------------------------- arrays


def _arrays(n: int, seed: int, grey: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (n, 6, 6) if grey else (n, 6, 6, 3)
    return rng.integers(0, 256, shape, dtype=np.uint8), np.arange(n) % 4


def test_npz_with_split_keys(tmp_path):
    x_train, y_train = _arrays(8, 0)
    x_test, y_test = _arrays(3, 1)
    path = tmp_path / "set.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    assert split_names(str(path)) == ("train", "test")
    train = load_dataset(str(path))
    np.testing.assert_array_equal(train.images, x_train)
    assert train.class_names == ("0", "1", "2", "3")  # from the labels of every split
    test = load_dataset(str(path), "test")
    assert test.class_names == ("0", "1", "2", "3") and test.labels.tolist() == [0, 1, 2]
    assert len(load_dataset(str(path), "train+test")) == 11


def test_npz_grey_digits_get_a_channel_axis_and_class_names(tmp_path):
    x, y = _arrays(5, 2, grey=True)
    path = tmp_path / "digits.npz"
    np.savez(path, x=x, y=y.astype(np.uint8), class_names=np.array(["a", "b", "c", "d", "e"]))
    ds = load_dataset(str(path))
    assert ds.image_shape == (6, 6, 1) and ds.class_names == ("a", "b", "c", "d", "e")
    np.testing.assert_array_equal(ds.images[..., 0], x)
    assert load_dataset(str(path), "all", channels=3).image_shape == (6, 6, 3)
    resized = load_dataset(str(path), image_size=12, channels=3)
    assert resized.image_shape == (12, 12, 3)
    np.savez(tmp_path / "none.npz", x=x[:0], y=y[:0])
    assert load_dataset(str(tmp_path / "none.npz"), image_size=4).images.shape == (0, 4, 4, 1)


def test_npz_mismatched_lengths(tmp_path):
    x, y = _arrays(5, 3)
    path = tmp_path / "bad.npz"
    np.savez(path, x_train=x, y_train=y[:4])
    with pytest.raises(UsageError, match=r"`spec`.*5 images, 4 labels"):
        load_dataset(str(path))


def test_npz_without_labels(tmp_path):
    path = tmp_path / "nolabels.npz"
    np.savez(path, x_train=_arrays(2, 0)[0])
    with pytest.raises(UsageError, match=r"`spec`.*'y_train'"):
        load_dataset(str(path))


def test_npz_float_images_are_rejected(tmp_path):
    path = tmp_path / "float.npz"
    np.savez(path, x=np.zeros((2, 4, 4, 3), np.float32), y=np.zeros(2, np.int64))
    with pytest.raises(UsageError, match=r"`spec`.*uint8"):
        load_dataset(str(path))


def test_npy_with_y_sibling_and_classes_file(tmp_path):
    x, y = _arrays(4, 4)
    np.save(tmp_path / "x_test.npy", x)
    np.save(tmp_path / "y_test.npy", y)
    (tmp_path / "x_test.classes.txt").write_text("zero\none\ntwo\nthree\n")
    assert split_names(str(tmp_path / "x_test.npy")) == ("test",)
    ds = load_dataset(str(tmp_path / "x_test.npy"), "test")
    assert ds.class_names == ("zero", "one", "two", "three")
    np.testing.assert_array_equal(ds.images, x)


def test_npy_with_labels_sibling(tmp_path):
    x, y = _arrays(4, 5)
    np.save(tmp_path / "digits.npy", x)
    with pytest.raises(UsageError, match=r"`spec`.*digits_labels.npy"):
        load_dataset(str(tmp_path / "digits.npy"))
    np.save(tmp_path / "digits_labels.npy", y)
    ds = load_dataset(str(tmp_path / "digits.npy"))
    assert ds.labels.tolist() == y.tolist()


def test_labels_outside_the_class_list(tmp_path):
    x, y = _arrays(4, 6)
    np.savez(tmp_path / "few.npz", x=x, y=y)
    (tmp_path / "few.classes.json").write_text(json.dumps(["a", "b"]))
    with pytest.raises(UsageError, match=r"`spec`.*0\.\.1"):
        load_dataset(str(tmp_path / "few.npz"))


@pytest.mark.parametrize("suffix, mode", [(".tar.xz", "w:xz"), (".tar", "w")])
def test_tar_of_npy_files(tmp_path, suffix, mode):
    x_train, y_train = _arrays(6, 7)
    x_test, y_test = _arrays(2, 8)
    members = {
        "set/x_train.npy": _npy_bytes(x_train), "set/y_train.npy": _npy_bytes(y_train),
        "set/x_test.npy": _npy_bytes(x_test), "set/y_test.npy": _npy_bytes(y_test),
        "set/classes.json": json.dumps(["w", "x", "y", "z"]).encode(),
    }
    path = tmp_path / f"arrays{suffix}"
    with tarfile.open(path, mode) as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    assert split_names(str(path)) == ("train", "test")
    test = load_dataset(str(path), "test")
    np.testing.assert_array_equal(test.images, x_test)
    assert test.class_names == ("w", "x", "y", "z")
    both = load_dataset(str(path), "train+test", image_size=3)
    assert both.image_shape == (3, 3, 3) and len(both) == 8


def test_directory_of_npy_files(tmp_path):
    x, y = _arrays(3, 9)
    np.save(tmp_path / "x_train.npy", x)
    np.save(tmp_path / "y_train.npy", y)
    assert len(load_dataset(str(tmp_path))) == 3


# ----------------------------------------------------------------------- exclusion and limits


def test_exclude_unknown_class_names_it(flat_folder):
    with pytest.raises(UsageError, match=r"`exclude_classes`.*'zebra'"):
        load_dataset(str(flat_folder), exclude_classes=["a", "zebra"])


def test_exclude_every_class_is_an_error(flat_folder):
    with pytest.raises(UsageError, match=r"`exclude_classes`.*at least one class"):
        load_dataset(str(flat_folder), exclude_classes=["a", "b", "c"])


def test_exclude_missing_file(flat_folder, tmp_path):
    with pytest.raises(UsageError, match=r"`exclude_classes`.*existing file"):
        load_dataset(str(flat_folder), exclude_classes=str(tmp_path / "nope.txt"))


def test_exclude_keeps_order_and_reindexes(flat_folder, pixels):
    ds = load_dataset(str(flat_folder), exclude_classes=["b"])
    assert ds.class_names == ("a", "c") and ds.labels.tolist() == [0, 0, 1, 1]
    np.testing.assert_array_equal(ds.images[2], pixels["c/0.png"])


def test_limit_is_deterministic_and_stratified(tmp_path):
    x = np.zeros((100, 2, 2, 3), np.uint8)
    x[:, 0, 0, 0] = np.arange(100)
    y = np.repeat([0, 1, 2, 3], [40, 30, 20, 10])
    np.savez(tmp_path / "many.npz", x=x, y=y)
    first = load_dataset(str(tmp_path / "many.npz"), limit=20, seed=3)
    again = load_dataset(str(tmp_path / "many.npz"), limit=20, seed=3)
    other = load_dataset(str(tmp_path / "many.npz"), limit=20, seed=4)
    assert len(first) == 20
    np.testing.assert_array_equal(first.images, again.images)
    assert not np.array_equal(first.images, other.images)
    assert first.class_counts().tolist() == [8, 6, 4, 2]
    assert len(load_dataset(str(tmp_path / "many.npz"), limit=7)) == 7
    assert len(load_dataset(str(tmp_path / "many.npz"), limit=1000)) == 100


@pytest.mark.parametrize("limit", [0, -5, 2.5, True])
def test_limit_must_be_positive_int(flat_folder, limit):
    with pytest.raises(UsageError, match="`limit`"):
        load_dataset(str(flat_folder), limit=limit)


# ------------------------------------------------------------------ sampling before decoding


def test_sample_decodes_only_the_chosen_images_in_a_seeded_order(tmp_path, monkeypatch):
    files = {f"{c}/{i}.png": _encode(_colour(10 * k + i)) for k, c in enumerate("pqr")
             for i in range(4)}
    root = _write_tree(tmp_path / "pool", files)
    whole = load_dataset(str(root), cache=False)
    assert data.count_images(str(root), "train") == 12 == len(whole)
    decoded = []
    decode = folders.decode_bytes
    monkeypatch.setattr(folders, "decode_bytes",
                        lambda *args: decoded.append(args[-1]) or decode(*args))
    sample = data.sample_dataset(str(root), "train", 5, seed=3)
    assert len(decoded) == 5  # the other seven are never decoded
    index = np.random.default_rng(3).permutation(12)[:5]
    np.testing.assert_array_equal(sample.images, whole.images[index])
    np.testing.assert_array_equal(sample.labels, whole.labels[index])
    assert sample.class_names == ("p", "q", "r")
    small = data.sample_dataset(str(root), "all", 4, image_size=2, channels=1, seed=3)
    assert small.image_shape == (2, 2, 1) and small.labels.tolist() == sample.labels[:4].tolist()
    with pytest.raises(UsageError, match=r"`spec`.*at least 13 images \(found 12\)"):
        data.sample_dataset(str(root), "train", 13)
    with pytest.raises(UsageError, match="`count`"):
        data.sample_dataset(str(root), "train", 0)


def test_sample_of_arrays_is_the_same_permutation(tmp_path):
    x = np.arange(10, dtype=np.uint8)[:, None, None, None].repeat(2, 1).repeat(2, 2)
    np.savez(tmp_path / "a.npz", x_train=x, y_train=np.arange(10) % 2)
    sample = data.sample_dataset(str(tmp_path / "a.npz"), "train", 4, seed=7)
    assert sample.images[:, 0, 0, 0].tolist() == \
        np.random.default_rng(7).permutation(10)[:4].tolist()
    assert data.count_images(str(tmp_path / "a.npz"), "train") == 10


def test_exclude_classes_of_a_loaded_dataset(flat_folder):
    ds = load_dataset(str(flat_folder))
    kept = data.exclude_classes(ds, ["c", "zebra"], missing_ok=True)
    assert kept.class_names == ("a", "b") and kept.labels.tolist() == [0, 0, 1, 1]
    assert data.exclude_classes(ds, ["zebra"], missing_ok=True) is ds
    with pytest.raises(UsageError, match=r"`exclude_classes`.*'zebra'"):
        data.exclude_classes(ds, ["zebra"])


def test_decoding_reads_ahead_a_few_chunks_only():
    pulled = []

    def chunks():
        for i in range(60):
            pulled.append(i)
            yield [i]

    ahead = [len(pulled) - done for done, _ in enumerate(imaging.lazy_map(lambda i: i, chunks()))]
    assert max(ahead) <= 2 * min(os.cpu_count() or 1, 8) + 2 < 60
    images = [np.full((3, 3), i, np.uint8) for i in range(5)]
    streamed = imaging.decode_stream(lambda a: a, [images[:2], images[2:]], 5, (3, 3), 1, "s")
    np.testing.assert_array_equal(streamed, imaging.stack(images, 1, "s"))
    more = imaging.decode_stream(lambda a: a, [images], 3, (3, 3), 1, "s")  # more than said
    np.testing.assert_array_equal(more, streamed)


# ----------------------------------------------------------------------------------- the cache


def test_second_load_reads_the_cache_without_decoding(flat_folder, monkeypatch):
    first = load_dataset(str(flat_folder), image_size=4)
    assert list(data.cache_dir().glob("*.npz"))

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(folders, "decode_files", no_decoding)
    second = load_dataset(str(flat_folder), image_size=4)
    np.testing.assert_array_equal(first.images, second.images)
    assert second.class_names == first.class_names
    with pytest.raises(AssertionError, match="decoded although cached"):
        load_dataset(str(flat_folder), image_size=5)  # another size is another cache entry


def test_changed_source_is_decoded_again(flat_folder):
    load_dataset(str(flat_folder))
    _write_tree(flat_folder, {"d/0.png": _encode(_colour(5))})
    assert load_dataset(str(flat_folder)).class_names == ("a", "b", "c", "d")


def test_changed_labels_beside_an_npy_invalidate_the_cache(tmp_path):
    x, y = _arrays(4, 11)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    assert load_dataset(str(tmp_path / "x.npy"), image_size=3).labels.tolist() == [0, 1, 2, 3]
    np.save(tmp_path / "y.npy", y[::-1].astype(np.int32))  # other size as well as mtime
    assert load_dataset(str(tmp_path / "x.npy"), image_size=3).labels.tolist() == [3, 2, 1, 0]


def test_corrupt_cache_is_ignored_and_rebuilt(split_zip, monkeypatch):
    expected = load_dataset(str(split_zip), "train+test")
    files = sorted(data.cache_dir().glob("*.npz"))
    assert len(files) == 2
    for file in files:
        file.write_bytes(b"garbage")
    rebuilt = load_dataset(str(split_zip), "train+test")
    np.testing.assert_array_equal(rebuilt.images, expected.images)
    monkeypatch.setattr(folders, "decode_files", lambda *a, **k: pytest.fail("cache not rewritten"))
    load_dataset(str(split_zip), "train+test")


def test_cache_can_be_turned_off(flat_folder):
    load_dataset(str(flat_folder), cache=False)
    assert not data.cache_dir().exists() or not list(data.cache_dir().iterdir())


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MEXT_CACHE_DIR", str(tmp_path / "c"))
    assert data.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("MEXT_CACHE_DIR")
    assert data.cache_dir() == Path.home() / ".cache" / "mext"


# ------------------------------------------------------------------------------ argument errors


def test_missing_path(tmp_path):
    with pytest.raises(UsageError, match=r"`spec`.*no such path"):
        load_dataset(str(tmp_path / "nothing.zip"))
    assert not (tmp_path / "nothing.zip").exists()


def test_unknown_split_lists_the_splits(split_zip):
    with pytest.raises(UsageError, match=r"`split`.*'val'.*'train', 'test'"):
        load_dataset(str(split_zip), "val")


@pytest.mark.parametrize("split", ["", "train+", "train+train"])
def test_malformed_split(flat_folder, split):
    with pytest.raises(UsageError, match="`split`"):
        load_dataset(str(flat_folder), split)


@pytest.mark.parametrize("image_size", [0, (4,), (4, 0), "32", 2.0])
def test_bad_image_size(flat_folder, image_size):
    with pytest.raises(UsageError, match="`image_size`"):
        load_dataset(str(flat_folder), image_size=image_size)


@pytest.mark.parametrize("channels", [0, 2, 4, True])
def test_bad_channels(flat_folder, channels):
    with pytest.raises(UsageError, match="`channels`"):
        load_dataset(str(flat_folder), channels=channels)


def test_unsupported_file_type(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("1,2,3")
    with pytest.raises(UsageError, match=r"`spec`.*\.zip, \.npz"):
        load_dataset(str(path))


# ------------------------------------------------------------------------------- the dataclass


def test_dataset_subset_and_validation():
    images = np.zeros((4, 2, 2, 3), np.uint8)
    ds = ImageDataset(images, np.array([0, 1, 1, 0]), ["a", "b"], "test")
    assert ds.class_names == ("a", "b") and ds.labels.dtype == np.int64
    part = ds.subset([1, 2])
    assert len(part) == 2 and part.labels.tolist() == [1, 1] and part.class_names == ("a", "b")
    assert len(ds.subset(ds.labels == 0)) == 2
    assert len(ds.subset([])) == 0
    assert "4x2x2x3" in repr(ds)
    with pytest.raises(UsageError, match="`labels`"):
        ImageDataset(images, np.array([0, 1, 2, 0]), ("a", "b"), "test")
    with pytest.raises(UsageError, match="`images`"):
        ImageDataset(images.astype(np.float32), np.zeros(4, int), ("a",), "test")
    with pytest.raises(UsageError, match="`labels`"):
        ImageDataset(images, np.zeros(3, int), ("a",), "test")


# ------------------------------------------------------------------------------------ real data


def _shared(name: str) -> str:
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared real-data folder is not on this machine)")
    return str(path)


@pytest.mark.realdata
def test_real_cifar10_zip():
    spec = _shared("cifar10_jpeg_q75.zip")
    train, test = load_dataset(spec, "train"), load_dataset(spec, "test")
    assert len(train) == 50_000 and len(test) == 10_000
    assert train.class_names == (
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"
    )
    assert train.image_shape == (32, 32, 3)
    assert train.class_counts().tolist() == [5000] * 10
    # Pillow's accurate IDCT gives back the original CIFAR-10 channel means; DATA.md's
    # 124.1/123.0/112.6 are those of tf.io.decode_jpeg's default fast IDCT.
    means = train.images.reshape(-1, 3).mean(axis=0)
    np.testing.assert_allclose(means, [125.3, 123.0, 113.9], atol=0.5)


@pytest.mark.realdata
def test_real_tiny_imagenet_out_of_distribution_classes():
    spec = _shared("tinyimagenet200_val10k_train50pc.zip")
    overlap = _shared("tinyimagenet_cifar10_overlap_wnids.txt")
    ood = load_dataset(spec, "train+val", exclude_classes=overlap)
    assert len(ood) == 17_600 and ood.num_classes == 176
    assert ood.image_shape == (64, 64, 3)
    assert not set(Path(overlap).read_text().split()) & set(ood.class_names)
    assert ood.class_descriptions is not None and all(ood.class_descriptions)


@pytest.mark.realdata
def test_real_gtsrb_tar():
    spec = _shared("gtsrb32_uint8_npy.tar.xz")
    train, test = load_dataset(spec, "train"), load_dataset(spec, "test")
    assert len(train) == 39_209 and len(test) == 12_630
    assert train.num_classes == test.num_classes == 43
    assert train.class_counts()[0] == 210 and train.class_counts()[2] == 2250


@pytest.mark.realdata
def test_real_mnist_npz():
    ds = load_dataset(_shared("mnist_test10k_uint8.npz"), "test", channels=3, image_size=32)
    assert len(ds) == 10_000 and ds.num_classes == 10 and ds.image_shape == (32, 32, 3)
