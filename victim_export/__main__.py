"""``python -m victim_export``: train a victim classifier and export it for TensorFlow Serving."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from common.cli import configure_logging, parse_config, run_cli
from victim_export.config import VictimConfig

PROG = "python -m victim_export"

EPILOG = """\
example (the small CNN on CIFAR-10, served by the official container):
  python -m victim_export --dataset ../shared/data/cifar10_jpeg_q75.zip --arch cnn \\
      --epochs 30 --out victims --name cifar10_cnn
  # -> victims/cifar10_cnn/1/ (SavedModel), victims/cifar10_cnn/card.json, victims/models.config
  docker run -p 8500:8500 -v "$PWD/victims:/models" tensorflow/serving \\
      --model_config_file=/models/models.config

more:
  traffic signs (no horizontal flip; 97.5% on GTSRB's test set, docs/victims.md):
      --dataset ../shared/data/gtsrb32_uint8_npy.tar.xz --arch cnn \\
      --arch-args "filters=[16,32,64]" "block_dropout=[0.1,0.1,0.2]" dense_units=128 \\
      dense_dropout=0.3 --augment rotate+crop+color --epochs 10 --learning-rate 0.002 \\
      --val-split 0 --label-smoothing 0.1 --name gtsrb_cnn
  fine-tune a pre-trained backbone:    --arch MobileNet --arch-args alpha=0.25 \\
      --input-size 96 --weights ../shared/data/mobilenet_2_5_224_tf_no_top.h5
  quick smoke run:                     --limit 5000 --epochs 1
  dense victims of the exact attacks (float64 pixels in [0, 1]; MNIST has one split, 20% of it
  is held out): --dataset ../shared/data/mnist_test10k_uint8.npz --train-split test \\
      --test-split test --arch softmax --export-logits   (or --arch mlp --arch-args hidden=16)
Each run writes the next free version (1, 2, ...) unless --version is given; an existing
version is never overwritten.
After a crash, Ctrl-C or kill, the same command resumes after the last finished epoch (the
state is journaled in <out>/<name>/.training, removed once exported; a state written under
other settings is refused, --fresh discards it). So do --distribute runs (the chief journals;
multi-worker runs need one --out shared by every worker); --distribute may change on resume.
"""


def _main(argv: Sequence[str] | None) -> int:
    config = parse_config(VictimConfig, argv, prog=PROG, epilog=EPILOG)
    configure_logging()
    from victim_export.train import run_victim_export  # TensorFlow: once the flags are valid

    path, trained = run_victim_export(config)
    if path is None:  # a multi-worker task other than the chief: nothing exported here
        print(f"{config.model_name}: trained as a worker ({trained.epochs_run} epochs, test "
              f"accuracy {trained.test_accuracy:.4f}); the chief exports the victim")
        return 0
    print(
        f"{config.model_name} version {path.name}: {config.arch} on {config.dataset}, "
        f"test accuracy {trained.test_accuracy:.4f} after {trained.epochs_run} epochs "
        f"({trained.training_seconds:.0f}s) -> {path}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with `argv` (default ``sys.argv[1:]``); return the exit code."""
    return run_cli(_main, argv, prog=PROG,
                   resume_hint="nothing was exported; every finished epoch is kept in "
                               "<out>/<name>/.training: the same command resumes after the last "
                               "one")


if __name__ == "__main__":
    sys.exit(main())
