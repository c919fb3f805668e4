"""``python -m detector.train``: train Atli et al.'s OOD query detector, calibrate, export.

The command line of `detector.training.train_detector` (flags derived from `DetectorConfig`): benign
images are the victim's training distribution, attack images natural images outside the task;
the threshold is calibrated on held-out benign images for ``--target-fpr`` and the detector is
exported to ``--out <base>/<name>/<version>`` as a SavedModel TF Serving can serve, with
``assets.extra/calibration.json``. A killed run resumes from its last finished epoch when the
same command is run again. ``--distribute mirrored|multiworker`` trains on every GPU of the
machine or on several machines (`common.distribute`, docs/distributed.md).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from common.cli import configure_logging, parse_config, run_cli
from common.fileio import check_writable
from detector.config import DetectorConfig
from detector.export import describe_calibration

__all__ = ["main"]

PROG = "python -m detector.train"

EPILOG = """\
example (the CIFAR-10 victim against Tiny-ImageNet queries, pre-trained MobileNet at 96 px):
  python -m detector.train --benign ../shared/data/cifar10_jpeg_q75.zip \\
      --attack ../shared/data/tinyimagenet200_val10k_train50pc.zip --attack-split train \\
      --exclude-classes ../shared/data/tinyimagenet_cifar10_overlap_wnids.txt \\
      --backbone MobileNet --arch-args alpha=0.25 \\
      --weights ../shared/data/mobilenet_2_5_224_tf_no_top.h5 --input-size 96 \\
      --benign-limit 10000 --epochs 3 --out detectors/cifar10_ood/1
  # -> detectors/cifar10_ood/1/ (SavedModel, probabilities[:, 1] = attack)
  #    detectors/cifar10_ood/1/assets.extra/calibration.json (threshold, held-out accuracy)

one that survives JPEG, resize, blur and noise (every image of both sets JPEG-encoded, then the
same random transforms on both; recalibrate with python -m detector.calibrate --transforms
evasions and watch it with the binomial window, docs/defence.md):
  ... the same data and backbone flags ... --benign-limit 12000 --epochs 4 --target-fpr 0.02 \\
      --jpeg-augment 1 --augment 0.8 --augment-jpeg 0.5 --out detectors/cifar10_ood_robust/1
"""


def _main(argv: Sequence[str] | None) -> int:
    config = parse_config(DetectorConfig, argv, prog=PROG, epilog=EPILOG)  # --out checked there
    check_writable(config.work_path, "work_dir")  # the checkpoints, before any training
    configure_logging()
    from detector.training import train_detector  # TensorFlow: after the flags are checked

    result = train_detector(config)
    where = result.path or "trained as a worker (the chief exports)"
    print(f"{where}: {describe_calibration(result.calibration)} "
          f"({result.training_seconds:.0f}s training)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with `argv` (default ``sys.argv[1:]``); return the exit code."""
    return run_cli(_main, argv, prog=PROG, resume_hint="the finished epochs are kept; the same "
                   "command continues from the last one")


if __name__ == "__main__":
    sys.exit(main())
