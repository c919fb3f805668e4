"""Predict throughput and latency of the embedded server against the same signature in-process.

    python -m benchmarks.serving_bench --model-dir victims/cifar10_cnn --batches 1,64,256

For each batch size it measures, side by side and interleaved in rounds (these machines are
noisy): (a) the SavedModel's `serving_default` called in this process, (b) gRPC Predict to the
embedded model server started as a separate process with the model (`python -m
serving.model_server`), requests built from uint8 arrays with `tensor_content` and answers
decoded from `float_val`; each with one call at a time, then with several in flight (threads).
It prints images/s, p50 and p99 latency per call, and the ratio of each gRPC row to the
in-process row with the same number of calls in flight.

Without `--model-dir` it exports an untrained CIFAR-10 CNN (same graph, so the same cost) to a
temporary folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from common.errors import UsageError, invalid
from serving import testing


def _percentiles(samples: list[float]) -> tuple[float, float]:
    arr = np.array(samples) * 1000.0
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serving_bench",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", default="", help="model base folder (<dir>/<version>/)")
    parser.add_argument("--batches", default="1,64,256")
    parser.add_argument("--seconds", type=float, default=4.0, help="time per measurement round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--in-flight", type=int, default=4)
    ns = parser.parse_args(argv)
    try:
        batches = [int(b) for b in ns.batches.split(",")]
        if not batches or min(batches) < 1:
            raise ValueError
    except ValueError:
        err = invalid("batches", ns.batches, "comma-separated positive integers")
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from serving.codec import from_ndarray, to_ndarray

    tmp = tempfile.TemporaryDirectory()
    try:
        model_dir = (Path(ns.model_dir) if ns.model_dir
                     else testing.export_untrained_cnn(Path(tmp.name)))
        versions = sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit())
        if not versions:
            raise invalid("model-dir", str(model_dir), "a folder with integer version sub-folders")
    except UsageError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    version_dir = model_dir / str(versions[-1])
    fn = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    input_name, spec = next(iter(fn.structured_input_signature[1].items()))
    shape = tuple(spec.shape[1:])

    server = testing.model_server(base_path=model_dir, name="victim", process=True,
                                  flags=[f"--grpc_max_threads={max(8, ns.in_flight * 2)}"])
    port = server.port
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[
        ("grpc.max_send_message_length", 2**31 - 1),
        ("grpc.max_receive_message_length", 2**31 - 1)])
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    try:
        grpc.channel_ready_future(channel).result(timeout=120)
        rng = np.random.default_rng(0)
        rows = []
        for batch in batches:
            images = rng.integers(0, 256, size=(batch, *shape), dtype=np.uint8)

            def local(images=images):
                out = fn(**{input_name: tf.constant(images)})
                return out["probabilities"].numpy()

            def remote(images=images):
                request = predict_pb2.PredictRequest()
                request.model_spec.name = "victim"
                request.inputs[input_name].CopyFrom(from_ndarray(images, use_tensor_content=True))
                request.output_filter.append("probabilities")
                response = stub.Predict(request, timeout=60)
                return to_ndarray(response.outputs["probabilities"])

            # warm-up: both paths, and they must agree
            for _ in range(3):
                np.testing.assert_allclose(local(), remote(), atol=1e-5)
            paths = (("in-process", local, 1), ("gRPC", remote, 1),
                     (f"in-process x{ns.in_flight}", local, ns.in_flight),
                     (f"gRPC x{ns.in_flight}", remote, ns.in_flight))
            stats = {name: ([], 0, 0.0) for name, _, _ in paths}
            for _ in range(ns.rounds):
                for name, call, width in paths:
                    lat, n, spent = stats[name]
                    t_end = time.perf_counter() + ns.seconds
                    start = time.perf_counter()

                    def worker(call=call, lat=lat, t_end=t_end):
                        count = 0
                        while time.perf_counter() < t_end:
                            t0 = time.perf_counter()
                            call()
                            lat.append(time.perf_counter() - t0)
                            count += 1
                        return count

                    with ThreadPoolExecutor(width) as pool:
                        done = sum(pool.map(lambda _: worker(), range(width)))
                    stats[name] = (lat, n + done * batch, spent + time.perf_counter() - start)
            for name, (lat, n, spent) in stats.items():
                p50, p99 = _percentiles(lat)
                base = stats[name.replace("gRPC", "in-process")]
                rows.append((batch, name, n / spent, p50, p99, (n / spent) / (base[1] / base[2])))
    finally:
        channel.close()
        server.stop()
        tmp.cleanup()

    print(f"model: {version_dir}  input: {input_name} uint8 {list(shape)}  "
          f"rounds: {ns.rounds} x {ns.seconds:.1f}s  cores: {os.cpu_count()}")
    print(f"{'batch':>5}  {'path':<12} {'images/s':>10} {'p50 ms':>9} {'p99 ms':>9} "
          f"{'vs in-process':>14}")
    for batch, name, tp, p50, p99, ratio in rows:
        print(f"{batch:>5}  {name:<12} {tp:>10.1f} {p50:>9.2f} {p99:>9.2f} {ratio:>13.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
