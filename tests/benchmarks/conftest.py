"""Fixtures the defended benchmarks' tests share: a folder layout for argument checks and the
tiny colour worlds of their end-to-end runs (built once per test process)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.harness.defended import TRANSFER, WEIGHTS
from tests.benchmarks.colours import (
    CLASSES,
    bright_detector,
    colour_images,
    colour_labels,
    export_victim,
)


@pytest.fixture
def layout(tmp_path):
    """A victims folder with a (fake) victim, a detector folder and a data folder holding the
    registry's (empty) files."""
    (tmp_path / "victims" / "cifar10_cnn" / "1").mkdir(parents=True)
    (tmp_path / "det" / "1").mkdir(parents=True)
    data = tmp_path / "data"
    data.mkdir()
    for name in ("cifar10_jpeg_q75.zip", TRANSFER, WEIGHTS,
                 "tinyimagenet_cifar10_overlap_wnids.txt"):
        (data / name).write_bytes(b"")
    return tmp_path


@pytest.fixture
def one_line_error(layout, capsys):
    """`check(main, argv, argument)`: `main(argv + ["--out", <layout>/out])` exits 2 with one
    line on stderr naming `argument`, and writes nothing."""
    def check(main, argv, argument):
        out = layout / "out"
        assert main([*argv, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and argument in err[0], err
        assert not out.exists()

    return check


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """victims/colours, a bright-image detector, a dark benign set and a bright transfer set."""
    base = tmp_path_factory.mktemp("world")
    export_victim(base)
    detector = bright_detector(base / "detectors" / "bright" / "1")
    benign = colour_images(400, seed=2)
    np.savez(base / "benign.npz", x_test=benign, y_test=colour_labels(benign),
             class_names=np.array(CLASSES))
    transfer = colour_images(600, seed=1, offset=90)
    np.savez(base / "transfer.npz", x_train=transfer, y_train=np.zeros(600, np.int64))
    return base, detector


@pytest.fixture(scope="session")
def prada_world(tmp_path_factory):
    """victims/colours, seeds and benign images, and a transfer set (all natural-looking)."""
    base = tmp_path_factory.mktemp("prada_world")
    export_victim(base)
    seeds = colour_images(300, seed=3)
    benign = colour_images(400, seed=2, offset=90)
    np.savez(base / "benign.npz", x_train=seeds, y_train=colour_labels(seeds), x_test=benign,
             y_test=colour_labels(benign), class_names=np.array(CLASSES))
    transfer = colour_images(400, seed=1, offset=90)
    np.savez(base / "transfer.npz", x_train=transfer, y_train=np.zeros(400, np.int64))
    return base
