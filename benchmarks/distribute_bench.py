"""Surrogate training throughput under ``--distribute``: mirrored over N devices against none.

Trains the same `attack.surrogate.SurrogateTrainer` (same data, seed and global batch) once per
strategy and seed, side by side in one process, and prints the images/s of each (epochs after
the first, so tracing is not counted), their ratio (the median over the seeds of each seed's
back-to-back pair) and the test accuracy (mean and spread over the seeds). Without a GPU the
CPU is split into ``--devices`` logical devices before TensorFlow starts, as the tests do; with
GPUs, mirrored uses all of them. ``--multiworker`` then runs the multi-worker path:
``--workers`` local processes on loopback ports, each with its own TF_CONFIG, training the same
surrogate together.

The data are real: CIFAR-10 (``../shared/data/cifar10_jpeg_q75.zip`` by default), the surrogate
trained on the labels as a label-only victim answers them (one-hot rows).

    python -m benchmarks.distribute_bench --seeds 0 1 2
    python -m benchmarks.distribute_bench --seeds 0 --multiworker
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from common.data import load_dataset
from common.distribute import is_chief, make_strategy
from serving.testing import pick_unused_port

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT / ".." / "shared" / "data" / "cifar10_jpeg_q75.zip"
TINY_CNN = {"filters": [16, 32], "block_dropout": [0.0, 0.0], "dense_units": 64,
            "dense_dropout": 0.0}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.distribute_bench",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="dataset spec (common.data)")
    p.add_argument("--train", type=int, default=2000, help="training images")
    p.add_argument("--test", type=int, default=1000, help="test images")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64, help="the global batch")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--devices", type=int, default=2,
                   help="logical CPU devices to split the CPU into (no GPU)")
    p.add_argument("--multiworker", action="store_true",
                   help="also run the multi-worker path with --workers local processes")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--worker-task", type=int, help=argparse.SUPPRESS)
    return p


class _EpochTimes:
    """Seconds of each epoch (a Keras callback, built lazily: Keras is imported late)."""

    @staticmethod
    def make():
        import keras

        class EpochTimes(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.seconds: list[float] = []

            def on_epoch_begin(self, epoch, logs=None):
                self._start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.seconds.append(time.perf_counter() - self._start)

        return EpochTimes()


def _load(args):
    import numpy as np

    train = load_dataset(args.data, "train", limit=args.train, seed=0, channels=3)
    test = load_dataset(args.data, "test", limit=args.test, seed=0, channels=3)
    targets = np.eye(train.num_classes, dtype=np.float32)[train.labels]
    return train, test, targets


def _train_once(args, train, test, targets, distribute: str, seed: int) -> dict:
    from attack.surrogate import SurrogateTrainer

    trainer = SurrogateTrainer("cnn", "none", train.image_shape[0], train.num_classes,
                               epochs=args.epochs, batch_size=args.batch_size, lr=2e-3,
                               seed=seed, augment="crop+flip", arch_kwargs=TINY_CNN,
                               distribute=distribute)
    timer = _EpochTimes.make()
    trainer.fit(train.images, targets, callbacks=[timer])
    steady = timer.seconds[1:] or timer.seconds
    accuracy = float((trainer.predict_logits(test.images).argmax(1) == test.labels).mean())
    return {"distribute": distribute, "seed": seed, "epoch_seconds": timer.seconds,
            "images_per_s": len(train) * len(steady) / sum(steady), "accuracy": accuracy}


def _summary(runs: list[dict], name: str) -> dict:
    rate = [r["images_per_s"] for r in runs if r["distribute"] == name]
    acc = [r["accuracy"] for r in runs if r["distribute"] == name]
    spread = statistics.stdev(acc) if len(acc) > 1 else 0.0
    return {"images_per_s": statistics.mean(rate), "accuracy_mean": statistics.mean(acc),
            "accuracy_sd": spread, "runs": len(rate)}


def _local(args) -> dict:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus and args.devices > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * args.devices)
    train, test, targets = _load(args)
    runs = []
    for seed in args.seeds:
        for name in ("none", "mirrored"):  # side by side, alternating, under the same load
            runs.append(_train_once(args, train, test, targets, name, seed))
            print(f"seed {seed} {name:>8}: {runs[-1]['images_per_s']:.0f} images/s, "
                  f"test accuracy {runs[-1]['accuracy']:.4f}", flush=True)
    return {"devices": [d.name for d in tf.config.list_logical_devices("GPU" if gpus else "CPU")],
            "runs": runs, "none": _summary(runs, "none"), "mirrored": _summary(runs, "mirrored")}


def _worker(args) -> int:
    strategy = make_strategy("multiworker")  # before any other TensorFlow operation
    train, test, targets = _load(args)
    result = _train_once(args, train, test, targets, "multiworker", args.seeds[0])
    result["chief"] = is_chief(strategy)
    result["replicas"] = strategy.num_replicas_in_sync
    print(json.dumps(result), flush=True)
    return 0


def _multiworker(args) -> dict:
    ports = [pick_unused_port() for _ in range(args.workers)]
    cluster = {"worker": [f"localhost:{port}" for port in ports]}
    base = [sys.executable, "-m", "benchmarks.distribute_bench", "--data", args.data,
            "--train", str(args.train), "--test", str(args.test), "--epochs", str(args.epochs),
            "--batch-size", str(args.batch_size), "--seeds", str(args.seeds[0])]
    procs = []
    for index in range(args.workers):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CONFIG": json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}})}
        procs.append(subprocess.Popen([*base, "--worker-task", str(index)], cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=3600)
        if proc.returncode != 0:
            raise RuntimeError(f"worker exited with {proc.returncode}: {err[-2000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return {"workers": results}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.batch_size % max(1, args.devices):
        _parser().error(f"argument --batch-size: expected a multiple of --devices "
                        f"{args.devices}, received {args.batch_size}")
    sys.path.insert(0, str(ROOT))
    if args.worker_task is not None:
        return _worker(args)
    started = time.time()
    load = os.getloadavg()
    results = _local(args)
    none, mirrored = results["none"], results["mirrored"]
    # Each seed's pair ran back to back under the same load: the median of the pairs' ratios is
    # robust to the load drifting between seeds on a shared machine.
    rate = {(r["seed"], r["distribute"]): r["images_per_s"] for r in results["runs"]}
    pairs = [rate[seed, "mirrored"] / rate[seed, "none"] for seed in args.seeds]
    ratio = statistics.median(pairs)
    print(f"none:     {none['images_per_s']:.0f} images/s, test accuracy "
          f"{none['accuracy_mean']:.4f} +- {none['accuracy_sd']:.4f} ({none['runs']} seeds)")
    print(f"mirrored: {mirrored['images_per_s']:.0f} images/s, test accuracy "
          f"{mirrored['accuracy_mean']:.4f} +- {mirrored['accuracy_sd']:.4f} "
          f"({mirrored['runs']} seeds) on {len(results['devices'])} devices")
    print(f"ratio mirrored/none: {ratio:.2f} (median of the seeds' pairs: "
          f"{', '.join(f'{p:.2f}' for p in pairs)})")
    if args.multiworker:
        results["multiworker"] = _multiworker(args)
        for w in results["multiworker"]["workers"]:
            print(f"multiworker task (chief={w['chief']}, {w['replicas']} replicas): "
                  f"{w['images_per_s']:.0f} images/s, test accuracy {w['accuracy']:.4f}")
    results.update(ratio=ratio, pair_ratios=pairs, load_before=load, load_after=os.getloadavg(),
                   seconds=time.time() - started, argv=list(argv or sys.argv[1:]))
    print(f"load average before {load[0]:.2f}, after {os.getloadavg()[0]:.2f}; "
          f"{time.time() - started:.0f} s")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
