"""Does the attack keep the server busy? Query throughput of Knockoff's query phase against the
server's own Predict throughput, measured side by side in one run.

    python -m benchmarks.attack_throughput --model-dir victims/cifar10_cnn \\
        --transfer-set ../shared/data/tinyimagenet200_val10k_train50pc.zip --queries 4096

The embedded server runs as its own process. In alternating rounds it measures (a) plain
Predict calls through the project's client on the same images (batch 64, 4 in flight: the
most a client gets from this server) and (b) `attack.knockoff.extract` with the random strategy
and the durable journal (fsync per batch), each round into a fresh run directory. It prints
images/s for both and their ratio (the issue's goal: at least 0.9).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from attack.config import KnockoffConfig
from attack.knockoff import extract, prepare_run_dir
from common.data import load_dataset
from common.errors import UsageError, invalid
from serving import testing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.attack_throughput",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", required=True, help="victim base folder (<dir>/<v>/)")
    parser.add_argument("--transfer-set", required=True, help="data-layer spec of the images")
    parser.add_argument("--split", default="train")
    parser.add_argument("--queries", type=int, default=4096, help="images per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--in-flight", type=int, default=4)
    ns = parser.parse_args(argv)
    try:
        model_dir = Path(ns.model_dir)
        if not any(p.name.isdigit() for p in model_dir.glob("*")):
            raise invalid("model-dir", ns.model_dir, "a folder with integer version sub-folders")
        if ns.queries < ns.batch:
            raise invalid("queries", ns.queries, f"at least --batch ({ns.batch})")

        transfer = load_dataset(ns.transfer_set, ns.split)
    except UsageError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from serving.client import ServingClient

    server = testing.model_server(base_path=model_dir, name="victim", process=True)
    port = server.port
    rng = np.random.default_rng(0)
    results = {"Predict (client)": [0, 0.0], "attack query phase": [0, 0.0]}
    try:
        with ServingClient(f"127.0.0.1:{port}", "victim", batch_size=ns.batch,
                           max_in_flight=ns.in_flight) as client:
            client.predict(transfer.images[:ns.batch * 2])  # warm-up
            with tempfile.TemporaryDirectory() as tmp:
                for round_ in range(ns.rounds):
                    pick = rng.choice(len(transfer), size=ns.queries, replace=False)
                    start = time.perf_counter()
                    client.predict(transfer.images[pick])
                    results["Predict (client)"][0] += ns.queries
                    results["Predict (client)"][1] += time.perf_counter() - start

                    config = KnockoffConfig(
                        transfer_set=ns.transfer_set, transfer_split=ns.split,
                        grpc=f"127.0.0.1:{port}", model="victim", budget=ns.queries,
                        query_batch=ns.batch, in_flight=ns.in_flight, backbone="cnn",
                        weights="none", out=str(Path(tmp) / f"run{round_}"), seed=round_)
                    run_dir = prepare_run_dir(config)
                    start = time.perf_counter()
                    stats = extract(client, transfer, config, run_dir)
                    results["attack query phase"][0] += stats["answered"]
                    results["attack query phase"][1] += time.perf_counter() - start
    finally:
        server.stop()
    print(f"victim: {model_dir}  images: {ns.transfer_set} ({len(transfer)})  "
          f"rounds: {ns.rounds} x {ns.queries} queries  batch {ns.batch} x {ns.in_flight} "
          f"in flight  cores: {os.cpu_count()}")
    rates = {k: n / s for k, (n, s) in results.items()}
    for name, rate in rates.items():
        print(f"  {name:<20} {rate:>9.1f} images/s")
    ratio = rates["attack query phase"] / rates["Predict (client)"]
    print(f"  attack / Predict     {ratio:>9.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
