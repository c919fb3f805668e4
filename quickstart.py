"""`python -m quickstart`: the whole path on the embedded default, one command.

It runs, and prints before running, the same commands a user types (README "Step by step"):
train a CIFAR-10 CNN victim and export it for TF Serving (`python -m victim_export`), serve it
with the embedded model server started with `tensorflow_model_server`'s flags
(`python -m serving.model_server --model_config_file=...`), then query the whole CIFAR-10 test
set through the gRPC Predict API with the project's client and compare the accuracy seen through
the wire with the accuracy the exporter measured in-process. Later stages (the attack, the
detector) extend this command as they land.

A finished stage is not run again: an exported victim in `--out` is reused.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

from common.errors import UsageError, invalid

MODEL = "cifar10_cnn"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _show(cmd: list[str]) -> None:
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m quickstart",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir",
                        default=os.environ.get("MEXT_SHARED_DATA", "../shared/data"),
                        help="folder with cifar10_jpeg_q75.zip (default: ../shared/data)")
    parser.add_argument("--out", default="runs/quickstart", help="output folder")
    parser.add_argument("--epochs", type=int, default=3, help="victim training epochs")
    parser.add_argument("--limit", type=int, default=None,
                        help="train on at most this many images (quick look)")
    parser.add_argument("--test-limit", type=int, default=None,
                        help="query at most this many test images")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        dataset = Path(ns.data_dir) / "cifar10_jpeg_q75.zip"
        if not dataset.is_file():
            raise invalid("data-dir", ns.data_dir, "a folder holding cifar10_jpeg_q75.zip")
        if ns.epochs < 1:
            raise invalid("epochs", ns.epochs, "a positive integer")
    except UsageError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    out = Path(ns.out)
    victims = out / "victims"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")

    # 1. train and export
    if (victims / MODEL / "card.json").is_file():
        print(f"[1/3] victim already exported in {victims / MODEL}; reusing it", flush=True)
    else:
        print("[1/3] train the victim and export it for TF Serving", flush=True)
        cmd = [sys.executable, "-m", "victim_export", "--dataset", str(dataset), "--arch", "cnn",
               "--epochs", str(ns.epochs), "--out", str(victims), "--name", MODEL]
        if ns.limit:
            cmd += ["--limit", str(ns.limit)]
        _show(cmd)
        if subprocess.run(cmd, env=env).returncode != 0:
            return 1
    card = json.loads((victims / MODEL / "card.json").read_text())
    version, entry = max(card["versions"].items(), key=lambda kv: int(kv[0]))

    # 2. serve
    print("[2/3] serve it with the embedded model server (TF Serving's flags)", flush=True)
    port, rest_port = _free_port(), _free_port()
    cmd = [sys.executable, "-m", "serving.model_server", f"--port={port}",
           f"--rest_api_port={rest_port}", f"--model_config_file={victims / 'models.config'}",
           "--host=127.0.0.1"]
    _show(cmd)
    server = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    try:
        from common.data import load_dataset
        from serving.client import ServingClient

        test = load_dataset(str(dataset), "test", limit=ns.test_limit)
        print(f"[3/3] query {len(test)} test images through gRPC Predict", flush=True)
        with ServingClient(f"127.0.0.1:{port}", MODEL, max_in_flight=4, batch_size=256) as client:
            client.wait_until_available(timeout=120)
            info = client.metadata()
            print(f"      signature: {info.input_name} {info.input_dtype} "
                  f"{list(info.input_shape)} -> {info.probabilities} [batch, {info.num_classes}]")
            start = time.perf_counter()
            probs = client.predict(test.images)
            spent = time.perf_counter() - start
            accuracy = float((probs.argmax(1) == test.labels).mean())
            print(f"      {client.queries} queries in {spent:.1f} s "
                  f"({client.queries / spent:.0f} images/s)")
        print(f"\nvictim {MODEL} version {version}: test accuracy through gRPC {accuracy:.4f} "
              f"on {len(test)} images; in-process at export {entry.get('test_accuracy')} on "
              f"{entry.get('test_examples')} images ({entry.get('epochs_run')} epochs, "
              f"{entry.get('training_seconds')} s)")
    finally:
        server.terminate()
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
