"""Tests for `python -m quickstart`: where its data come from (a data folder, or downloads through
tensorflow-datasets and Keras when the folder is absent and the machine can download), its
one-line refusals before anything is trained or written, and its settings (quick and `--full`).

The online path runs for real against local tensorflow-datasets builders (they generate their
data instead of downloading it), as the data layer's tests do; the real builders' class lists
(offline metadata of the installed tensorflow-datasets) check the classes left out by name."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import quickstart
from common.data import load_dataset
from common.errors import UsageError
from quickstart import PROFILES, build_parser, fetch_online, resolve_sources, settings_from
from tests.common.tfds_builders import local_builder


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("MEXT_OFFLINE", "1")
    monkeypatch.setenv("MEXT_CACHE_DIR", str(tmp_path / "cache"))


def _local_folder(path):
    path.mkdir()
    for name in quickstart.LOCAL_FILES:
        (path / name).write_bytes(b"")
    return path


def test_offline_without_the_data_folder_names_both_ways_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    code = quickstart.main(["--data-dir", str(tmp_path / "absent"), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "cifar10_jpeg_q75.zip" in err and "(absent)" in err
    assert "a machine that can download CIFAR-10 and Imagenette" in err and "offline" in err
    assert not out.exists()


def test_an_incomplete_data_folder_says_what_is_missing(tmp_path, capsys):
    data = _local_folder(tmp_path / "data")
    (data / "mobilenet_2_5_224_tf_no_top.h5").unlink()
    assert quickstart.main(["--data-dir", str(data), "--out", str(tmp_path / "run")]) == 2
    assert "missing mobilenet_2_5_224_tf_no_top.h5" in capsys.readouterr().err


@pytest.mark.parametrize("argv, flag", [
    (["--budget", "0"], "budget"),
    (["--epochs", "-1"], "epochs"),
    (["--budget", "9000"], "budget"),  # more than the attacker's pool
])
def test_bad_settings_are_refused_before_anything_runs(tmp_path, capsys, argv, flag):
    data = _local_folder(tmp_path / "data")
    out = tmp_path / "run"
    assert quickstart.main(["--data-dir", str(data), "--out", str(out), *argv]) == 2
    assert f"`{flag}`" in capsys.readouterr().err
    assert not out.exists()


def test_an_output_folder_of_other_settings_is_refused(tmp_path, capsys):
    data = _local_folder(tmp_path / "data")
    out = tmp_path / "run"
    out.mkdir()
    record = {"settings": dataclasses.asdict(PROFILES["full"]), "data": "local"}
    (out / "quickstart.json").write_text(json.dumps(record))
    assert quickstart.main(["--data-dir", str(data), "--out", str(out)]) == 2
    assert "the settings it was run with" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["quickstart.json"]


def test_the_same_settings_are_recognised_after_a_round_trip_through_json(tmp_path):
    record = {"settings": dataclasses.asdict(PROFILES["quick"]), "data": "local"}
    path = tmp_path / "quickstart.json"
    assert quickstart.same_record(path, record)  # nothing recorded yet
    path.write_text(json.dumps(record))
    assert quickstart.same_record(path, record)
    assert not quickstart.same_record(path, {**record, "data": "online"})
    path.write_text("{torn")
    assert not quickstart.same_record(path, record)


def test_settings_quick_by_default_full_one_flag_away_and_each_flag_on_top():
    parser = build_parser()
    quick = settings_from(parser.parse_args([]))
    full = settings_from(parser.parse_args(["--full"]))
    assert quick == PROFILES["quick"] and full == PROFILES["full"]
    assert quick.test_limit and full.test_limit is None and full.limit is None
    assert quick.curve_points == 1 and full.curve_points == 3
    mixed = settings_from(parser.parse_args(["--full", "--budget", "1200", "--test-limit", "500"]))
    assert (mixed.budget, mixed.test_limit, mixed.epochs) == (1200, 500, full.epochs)


def test_sources_local_files_else_downloads(tmp_path, monkeypatch):
    data = _local_folder(tmp_path / "data")
    local = resolve_sources(str(data), tmp_path / "run")
    assert local.mode == "local" and local.dataset == str(data / "cifar10_jpeg_q75.zip")
    assert local.weights.endswith("mobilenet_2_5_224_tf_no_top.h5")
    # the attacker queries one Tiny-ImageNet split, the detector learns from the other
    assert {local.transfer_split, local.detector_split} == {"val", "train"}
    monkeypatch.setenv("MEXT_OFFLINE", "0")
    online = resolve_sources(str(tmp_path / "absent"), tmp_path / "run")
    assert online.mode == "online" and online.dataset == "tfds:cifar10"
    assert online.weights == "imagenet" and online.exclude is None
    assert online.transfer == str(tmp_path / "run" / "data" / "imagenette64.npz")
    assert {online.transfer_split, online.detector_split} == {"train", "validation"}


def test_the_left_out_classes_are_imagenette_classes():
    """The real builder's class list (shipped with tensorflow-datasets; nothing downloaded)."""
    tfds = pytest.importorskip("tensorflow_datasets")
    names = tfds.builder(quickstart.ONLINE_TRANSFER).info.features["label"].names
    assert len(names) == 10 and set(quickstart.ONLINE_OVERLAP) < set(names)


# -- the online path against local builders --------------------------------------------------------
def _noise(shape):
    return lambda i: np.random.default_rng(i).integers(0, 256, shape(i), dtype=np.uint8)


@pytest.fixture(scope="module")
def local_builders():
    """Two builders that generate their data: a fixed-size 'CIFAR' and natural images of
    varying size with Imagenette's train/validation splits and wnid class names."""
    tfds = pytest.importorskip("tensorflow_datasets")
    local_builder("MextQsCifar", tfds.features.Image(shape=(8, 8, 3)), ["airplane", "dog"],
                  {"train": (0, 4), "test": (0, 2)}, _noise(lambda i: (8, 8, 3)))
    local_builder("MextQsNette", tfds.features.Image(shape=(None, None, 3)),
                  ["n01", "n02", "n03"], {"train": (0, 9), "validation": (9, 6)},
                  _noise(lambda i: (20 + i, 16 + 2 * i, 3)))
    return "mext_qs_cifar", "mext_qs_nette"


@pytest.mark.slow  # two tensorflow-datasets preparations: about 10 s on a quiet 2-core machine
def test_fetch_online_downloads_and_leaves_the_victims_classes_out(local_builders, tmp_path,
                                                                   monkeypatch):
    cifar, nette = local_builders
    data_dir = str(tmp_path / "tfds")
    out = tmp_path / "run"
    kwargs = dict(dataset=cifar, transfer=nette, overlap={"n02": "a dog"}, size=8,
                  data_dir=data_dir)
    with pytest.raises(UsageError, match="not prepared"):  # offline: nothing is downloaded
        fetch_online(out, **kwargs)
    assert not (out / "data" / "imagenette8.npz").exists()
    monkeypatch.setenv("MEXT_OFFLINE", "0")  # "online": the builders prepare for real
    path = fetch_online(out, **kwargs)
    assert path == out / "data" / "imagenette8.npz"
    with np.load(path) as arrays:
        assert arrays["class_names"].tolist() == ["n01", "n03"]
        assert arrays["x_train"].shape == (6, 8, 8, 3) and arrays["x_validation"].shape[0] == 4
        assert set(arrays["y_train"].tolist()) == {0, 1}
    assert (out / "data" / "imagenette_cifar10_classes.txt").read_text() == "n02  # a dog\n"
    # the prepared file is what the attack and the detector read, through the data layer
    monkeypatch.setenv("MEXT_OFFLINE", "1")
    assert len(load_dataset(str(path), "validation")) == 4
    assert load_dataset(f"tfds:{cifar}", "test", data_dir=data_dir).class_names == (
        "airplane", "dog")
    stamp = path.stat().st_mtime_ns
    assert fetch_online(out, **kwargs) == path and path.stat().st_mtime_ns == stamp  # reused
