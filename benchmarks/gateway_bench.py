"""What the serving gateway costs, and whether it catches an extraction client.

    python -m benchmarks.gateway_bench --model-dir victims/cifar10_cnn \\
        --detector detectors/cifar10_ood/1 --batches 1,64
    python -m benchmarks.gateway_bench --flagging --upstream 127.0.0.1:8500 \\
        --detector detectors/cifar10_ood/1 --data ../shared/data

Latency mode (default): starts the embedded model server with the victim, then three gateways
in front of it (separate processes, as deployed: `python -m serving.gateway`) with no detector,
with the OOD detector in-process (Atli et al.), and with PRADA (Juuti et al.); then, side by
side and interleaved in rounds (these machines are noisy), sends the same pre-built Predict
requests (CIFAR-10 test images when `--data` has them, else random pixels) one at a time to
each target and prints p50/p99 latency, images/s and the ratio to direct for each batch size.
Without `--model-dir` it exports an untrained CIFAR-10 CNN (same graph, same cost); without
`--detector` an untrained detector with the real one's graph (MobileNet 0.25 at 96 px).

Flagging mode (`--flagging`): one gateway in this process in front of `--upstream` (e.g. the
lead's server with `cifar10_cnn`) with the OOD detector and PRADA; a Knockoff-like client sends
Tiny-ImageNet images of the classes that do not overlap CIFAR-10 until it is flagged, then the
CIFAR-10 test set is replayed as `--benign-clients` benign clients; it prints the query count at
which the attacker was flagged (by which detector) and how many benign clients were flagged.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common.data import load_dataset
from common.errors import UsageError, invalid
from detector.ood import export_detector
from serving import testing
from serving.gateway.auth import generate_key, hash_key
from serving.gateway.config import policy_from_dict
from serving.gateway.store import SQLiteStore, new_record

__all__ = ["main"]

PROG = "python -m benchmarks.gateway_bench"
REPO = Path(__file__).resolve().parents[1]


def _percentiles(samples: list[float]) -> tuple[float, float]:
    arr = np.array(samples) * 1000.0
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


def _export_stand_in_detector(base: Path) -> Path:
    """An untrained detector with the real one's graph (MobileNet alpha 0.25 at 96 px), so it
    costs the same per image; its verdicts are meaningless (latency only)."""
    import keras

    from common.backbones import build_classifier

    keras.utils.set_random_seed(0)
    classifier = build_classifier("mobilenet", 2, input_size=96, weights="none", alpha=0.25)
    inputs = keras.Input((32, 32, 3), dtype="float32", name="images")
    x = keras.layers.Resizing(96, 96, interpolation="bilinear")(inputs)
    model = keras.Model(inputs, classifier(x))
    return export_detector(model, base / "stand_in_ood" / "1",
                           {"threshold": 0.5, "target_fpr": 0.05, "benign_class": 0})


def _cifar_test(data: Path | None, limit: int) -> np.ndarray | None:
    if data is None or not (data / "cifar10_jpeg_q75.zip").is_file():
        return None

    return load_dataset(str(data / "cifar10_jpeg_q75.zip"), "test", limit=limit).images


def _gateway_key(work: Path, name: str) -> tuple[str, Path]:
    """A SQLite state for gateway `name` with one client, "bench"; (its key, the file)."""
    db = work / f"{name}.db"
    store = SQLiteStore(db)
    key = generate_key()
    store.add_client(new_record("bench", hash_key(key)))
    store.close()
    return key, db


def _latency(ns: argparse.Namespace, batches: list[int]) -> int:
    import grpc
    from tensorflow_serving.apis import predict_pb2

    from serving.codec import from_ndarray

    tmp = tempfile.TemporaryDirectory()
    work = Path(tmp.name)
    started: list[testing.Running] = []
    try:
        model_dir = (Path(ns.model_dir) if ns.model_dir
                     else testing.export_untrained_cnn(work / "m"))
        detector = Path(ns.detector) if ns.detector else _export_stand_in_detector(work / "d")
        print(f"victim {model_dir}, OOD detector {detector}", file=sys.stderr, flush=True)
        server = testing.model_server(base_path=model_dir, name="cifar10_cnn", process=True,
                                      wait=False)  # the gateways start meanwhile
        started.append(server)
        upstream = server.target
        base = {"limits": {"budget": None, "rate_per_second": 1e9, "burst": 1e9},
                "on_flag": {"action": "degrade", "policy": "label_only"}}
        variants = {
            "gateway": dict(base),
            "gateway+ood": dict(base, detectors={"ood": {"path": str(detector)}}),
            "gateway+prada": dict(base, detectors={"prada": {}}),
        }
        targets: dict[str, tuple[str, tuple]] = {"direct": (upstream, ())}
        for name, policy in variants.items():
            key, db = _gateway_key(work, name)
            gateway = testing.gateway(upstream, policy=policy, state=db, workdir=work / name,
                                      process=True, log_file=work / f"{name}.log", wait=False)
            started.append(gateway)
            targets[name] = (gateway.target, (("x-api-key", key),))
        testing.wait_for_models(upstream, ["cifar10_cnn"], proc=server.proc, log_file=server.log)
        for gateway in started[1:]:
            testing.wait_for_health(gateway.target, proc=gateway.proc, log_file=gateway.log)
        pool = _cifar_test(Path(ns.data) if ns.data else None, 4096)
        source = "CIFAR-10 test images" if pool is not None else "random pixels"
        if pool is None:
            pool = np.random.default_rng(0).integers(0, 256, (4096, 32, 32, 3), dtype=np.uint8)
        channels = {n: grpc.insecure_channel(a) for n, (a, _) in targets.items()}
        calls = {n: ch.unary_unary("/tensorflow.serving.PredictionService/Predict")
                 for n, ch in channels.items()}
        rows = []
        for batch in batches:
            requests = []
            for i in range(max(8, 4096 // batch)):
                req = predict_pb2.PredictRequest()
                req.model_spec.name = "cifar10_cnn"
                start = (i * batch) % len(pool)
                x = np.take(pool, range(start, start + batch), axis=0, mode="wrap")
                req.inputs["images"].CopyFrom(from_ndarray(x, use_tensor_content=True))
                requests.append(req.SerializeToString())
            lat: dict[str, list[float]] = {n: [] for n in targets}
            counter = {n: 0 for n in targets}
            for name in targets:  # warm up every path (graph tracing, detector first call)
                for _ in range(3):
                    calls[name](requests[0], metadata=targets[name][1], timeout=60)
            for _ in range(ns.rounds):
                for name in targets:
                    t_end = time.perf_counter() + ns.seconds
                    while time.perf_counter() < t_end:
                        payload = requests[counter[name] % len(requests)]
                        counter[name] += 1
                        t0 = time.perf_counter()
                        calls[name](payload, metadata=targets[name][1], timeout=60)
                        lat[name].append(time.perf_counter() - t0)
            p50_direct = _percentiles(lat["direct"])[0]
            for name in targets:
                p50, p99 = _percentiles(lat[name])
                thr = batch * len(lat[name]) / sum(lat[name])
                rows.append((batch, name, len(lat[name]), p50, p99, thr, p50 / p50_direct))
        print(f"\nPredict on {model_dir.name} ({source}), one call in flight, {ns.rounds} "
              f"interleaved rounds of {ns.seconds:g} s per target")
        print(f"{'batch':>5} {'target':<15} {'calls':>6} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'img/s':>8} {'p50 vs direct':>14}")
        for batch, name, n, p50, p99, thr, ratio in rows:
            print(f"{batch:>5} {name:<15} {n:>6} {p50:>8.2f} {p99:>8.2f} {thr:>8.0f} "
                  f"{ratio:>13.2f}x")
        for ch in channels.values():
            ch.close()
        return 0
    finally:
        for running in reversed(started):
            running.stop()
        tmp.cleanup()


def _flagging(ns: argparse.Namespace) -> int:
    from serving.client import ServingClient, ServingError

    data = Path(ns.data)
    tiny = data / "tinyimagenet200_val10k_train50pc.zip"
    cifar = data / "cifar10_jpeg_q75.zip"
    overlap = data / "tinyimagenet_cifar10_overlap_wnids.txt"
    for path in (tiny, cifar, overlap):
        if not path.is_file():
            raise invalid("data", str(data), f"a folder holding {path.name}")
    if not ns.detector:
        raise invalid("detector", ns.detector, "an exported OOD detector folder for --flagging")
    policy = policy_from_dict({
        "limits": {"budget": None, "rate_per_second": 1e9, "burst": 1e9},
        "detectors": {"ood": {"path": ns.detector, "window": ns.window, "level": ns.level,
                              "min_queries": ns.min_queries},
                      "prada": {"delta": 0.95, "min_samples": 100, "max_set": ns.max_set}},
        "on_flag": {"action": "degrade", "policy": "label_only"},
    })
    tmp = tempfile.TemporaryDirectory()
    db = Path(tmp.name) / "flagging.db"
    store = SQLiteStore(db)
    attack = load_dataset(str(tiny), "train", image_size=32, exclude_classes=str(overlap),
                          limit=ns.attack_queries, seed=1)
    benign = load_dataset(str(cifar), "test")
    keys = {}
    for name in ["knockoff"] + [f"benign{i}" for i in range(ns.benign_clients)]:
        keys[name] = generate_key()
        store.add_client(new_record(name, hash_key(keys[name])))
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    with testing.gateway(ns.upstream, policy=policy, state=db, store=store) as gw:
        target = gw.target

        def replay(name: str, images: np.ndarray, stop_when_flagged: bool) -> int:
            with ServingClient(target, ns.model, api_key=keys[name], batch_size=ns.batch
                               ) as client:
                sent = 0
                for start in range(0, len(images), ns.batch):
                    try:
                        client.predict(images[start:start + ns.batch])
                    except ServingError as err:
                        print(f"{name}: {err.code.name} after {sent} queries", file=sys.stderr)
                        break
                    sent += len(images[start:start + ns.batch])
                    if stop_when_flagged and store.load_detectors(name).flagged:
                        break
                return sent

        order = rng.permutation(len(attack.images))
        sent = replay("knockoff", attack.images[order], stop_when_flagged=True)
        state = store.load_detectors("knockoff")
        flagged_at = (state.ood or {}).get("flagged_at")
        degraded_from = None
        answered = 0
        for record in store.audit_records():
            if record.client != "knockoff":
                continue
            if record.action.startswith("degrade") and degraded_from is None:
                degraded_from = answered + 1
            answered += record.rows
        attack_rate = (state.ood or {}).get("flagged_queries", 0) / max(sent, 1)
        order = rng.permutation(len(benign.images))
        shares = np.array_split(order, ns.benign_clients)
        benign_flagged = []
        for i, idx in enumerate(shares):
            name = f"benign{i}"
            replay(name, benign.images[idx], stop_when_flagged=False)
            b = store.load_detectors(name)
            ood_state = b.ood or {}
            share = ood_state.get("flagged_queries", 0) / max(ood_state.get("queries", 1), 1)
            print(f"{name}: {len(idx)} queries, OOD per-query flag rate {share:.3f}, "
                  f"flagged={b.flagged} {b.flagged_by}", file=sys.stderr, flush=True)
            if b.flagged:
                benign_flagged.append(name)
    seconds = time.perf_counter() - started
    print(f"\nGateway in front of {ns.upstream} ({ns.model}); OOD {ns.detector} "
          f"(window {ns.window}, level {ns.level}, min {ns.min_queries}), PRADA delta 0.95, "
          f"batches of {ns.batch}")
    print(f"Knockoff-like client (Tiny-ImageNet, non-overlapping classes): "
          f"{'flagged by ' + state.flagged_by if state.flagged else 'NOT flagged'} after "
          f"{sent} queries sent (OOD window first reached the level at query {flagged_at}; "
          f"per-query OOD flag rate {attack_rate:.3f}; answers degraded from query "
          f"{degraded_from}, i.e. from the batch that crossed the level)")
    print(f"Benign clients (CIFAR-10 test set, {len(benign.images)} images over "
          f"{ns.benign_clients} clients): {len(benign_flagged)} flagged {benign_flagged}")
    print(f"({seconds:.0f} s)")
    tmp.cleanup()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--model-dir", default="", help="victim base folder (<dir>/<version>/)")
    add("--detector", default="", help="exported OOD detector (detectors/<name>/<version>)")
    add("--data", default=str(REPO.parent / "shared" / "data"),
        help="folder with the real datasets (CIFAR-10 test images as queries)")
    add("--batches", default="1,64")
    add("--seconds", type=float, default=3.0, help="time per target per round")
    add("--rounds", type=int, default=3)
    add("--flagging", action="store_true", help="measure flagging instead of latency")
    add("--upstream", default="127.0.0.1:8500", help="(--flagging) the victim's server")
    add("--model", default="cifar10_cnn", help="(--flagging) the victim's model name")
    add("--batch", type=int, default=16, help="(--flagging) images per request")
    add("--attack-queries", type=int, default=2048, help="(--flagging) most attack queries")
    add("--benign-clients", type=int, default=10)
    add("--window", type=int, default=256)
    add("--level", type=float, default=0.5)
    add("--min-queries", type=int, default=64)
    add("--max-set", type=int, default=2000)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        try:
            batches = [int(b) for b in ns.batches.split(",")]
            if not batches or min(batches) < 1:
                raise ValueError
        except ValueError:
            raise invalid("batches", ns.batches, "comma-separated positive integers") from None
        if ns.model_dir and not Path(ns.model_dir).is_dir():
            raise invalid("model-dir", ns.model_dir, "a model base folder")
        if ns.detector and not Path(ns.detector).exists():
            raise invalid("detector", ns.detector, "an exported detector folder")
        if ns.flagging:
            return _flagging(ns)
        return _latency(ns, batches)
    except UsageError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
