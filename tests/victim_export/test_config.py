"""Tests of VictimConfig validation and its command line."""

from __future__ import annotations

import pytest

from common.errors import UsageError
from victim_export.__main__ import main
from victim_export.config import VictimConfig, default_model_name


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"dataset": ""}, "argument `dataset`"),
        ({"arch": "alexnet"}, r"argument `arch`.*'alexnet'.*resnet34.*MobileNet"),
        ({"arch_args": ("alpha",)}, "argument `arch_args`.*KEY=VALUE"),
        ({"arch_args": ("2x=1",)}, "argument `arch_args`"),
        ({"weights": "/no/such/file.h5"}, "argument `weights`.*existing weights file"),
        ({"weights": "imagenet"}, "cnn` has no ImageNet weights"),
        ({"arch": "resnet34", "weights": "imagenet"}, "resnet34` has no ImageNet weights"),
        ({"input_size": 4}, r"argument `input_size`.*at least 8"),
        ({"arch": "InceptionV3", "input_size": 64}, r"at least 75 \(the minimum of InceptionV3"),
        ({"epochs": 0}, "argument `epochs`"),
        ({"batch_size": 0}, "argument `batch_size`"),
        ({"learning_rate": 0.0}, r"argument `learning_rate`.*a positive number"),
        ({"learning_rate": float("nan")}, "argument `learning_rate`"),
        ({"optimizer": "rmsprop"}, r"argument `optimizer`.*'adam', 'adamw', 'sgd'"),
        ({"weight_decay": -1.0}, "argument `weight_decay`"),
        ({"schedule": "step"}, "argument `schedule`"),
        ({"label_smoothing": 1.0}, r"argument `label_smoothing`.*\[0, 1\)"),
        ({"dropout": -0.1}, "argument `dropout`"),
        ({"augment": "blur"}, r"argument `augment`.*'none', 'rotate', 'crop', 'rotate\+crop'"),
        ({"augment": "flip+crop"}, r"argument `augment`.*'crop\+flip'"),  # parts in order
        ({"val_split": 0.5}, r"argument `val_split`.*\[0, 0.5\)"),
        ({"patience": -1}, "argument `patience`"),
        ({"limit": 1}, "argument `limit`"),
        ({"seed": -3}, "argument `seed`"),
        ({"out": " "}, "argument `out`"),
        ({"name": "../escape"}, "argument `name`"),
        ({"name": ".hidden"}, "argument `name`"),
        ({"version": 0}, "argument `version`"),
        ({"version": True}, "argument `version`"),
        ({"export_logits": "yes"}, "argument `export_logits`"),
        ({"container_base_path": "models"}, "argument `container_base_path`"),
    ],
)
def test_every_field_is_validated(kwargs, match):
    values = {"dataset": "data.npz", **kwargs}
    with pytest.raises(UsageError, match=match):
        VictimConfig(**values)


def test_valid_values_are_normalised():
    config = VictimConfig(dataset="../d/cifar10_jpeg_q75.zip", arch="MOBILENET",
                          weights="None", arch_args=("alpha=0.25", "name=feat", "x=[1, 2]"),
                          container_base_path="gs://bucket/models")
    assert config.arch == "MobileNet" and config.weights == "none"
    assert config.arch_kwargs == {"alpha": 0.25, "name": "feat", "x": [1, 2]}
    assert config.model_name == "cifar10_jpeg_q75_mobilenet"
    assert str(config.model_dir) == "victims/cifar10_jpeg_q75_mobilenet"
    assert VictimConfig(dataset="d", name="mine").model_name == "mine"
    assert VictimConfig(dataset="d", container_base_path="local").container_base_path == "local"


@pytest.mark.parametrize(
    "dataset, arch, expected",
    [
        ("cifar10", "cnn", "cifar10_cnn"),
        ("tfds:mnist:3.0.1", "resnet34", "tfds_mnist_3.0.1_resnet34"),
        ("../shared/data/gtsrb32_uint8_npy.tar.xz", "ResNet50", "gtsrb32_uint8_npy_resnet50"),
        ("/data/images/", "cnn", "images_cnn"),
    ],
)
def test_default_model_name(dataset, arch, expected):
    assert default_model_name(dataset, arch) == expected


def test_cli_validation_error_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "victims"
    code = main(["--dataset", str(tmp_path / "d.npz"), "--epochs", "0", "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("python -m victim_export: error: Invalid value for argument `--epochs`")
    assert not out.exists()


def test_cli_argparse_error_exits_2(capsys):
    assert main(["--dataset", "d", "--augment", "blur"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'blur'" in err
    # one line with a pointer to --help, not the whole usage first (issue 17, case 9)
    assert err.count("\n") == 1 and "usage:" not in err
    assert err.rstrip().endswith("(see python -m victim_export --help)")


def test_cli_names_the_dataset_flag_not_the_loader_parameter(tmp_path, capsys):
    # the data layer says `spec`; the user typed --dataset (issue 17, case 11)
    missing = tmp_path / "missing.npz"
    assert main(["--dataset", str(missing), "--out", str(tmp_path / "v")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "`--dataset`" in err and "spec" not in err
    assert f"--dataset={str(missing)!r}" in err and "no such path" in err


def test_cli_help_has_a_worked_example(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "python -m victim_export --dataset ../shared/data/cifar10_jpeg_q75.zip" in text
    assert "--augment none|PART+PART" in text and "rotate+crop+color for traffic" in text
    assert "--export-logits, --no-export-logits" in text
