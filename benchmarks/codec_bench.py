"""Speed of `serving.codec` against `tf.make_ndarray` and `tf.make_tensor_proto`; where they differ.

    python -m benchmarks.codec_bench [--repeat 7]

Part 1 times, side by side in one run, decoding (`to_ndarray` vs `tf.make_ndarray`) and encoding
(`from_ndarray` vs `tf.make_tensor_proto`) on the tensors the toolkit sends: a float32 [64, 10]
and [256, 10] probability batch in `float_val` (what TF Serving's Predict answers), and a uint8
[64, 32, 32, 3] image batch in `tensor_content` and in `int_val`. `tf.make_tensor_proto` always
writes `tensor_content` for these dtypes, so for typed-field encodings the table also shows the
plain protobuf way of filling the same field ("API": `proto.float_val.extend(array.tolist())`).
Each figure is the best of `--repeat` timeit rounds, in microseconds per call.

Part 2 decodes protos that the real server's `Tensor::FromProto` treats differently from
`tf.make_ndarray`; the server's answer is taken from `tf.io.parse_tensor`, which runs the same
C++ `FromProto` in this process.
"""

from __future__ import annotations

import argparse
import os
import timeit
from collections.abc import Callable

import numpy as np


def _best_us(fn: Callable[[], object], repeat: int) -> float:
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    return min(timer.repeat(repeat, number)) / number * 1e6


def _speed_rows(repeat: int) -> list[tuple[str, str, float, float, str, float | None]]:
    import tensorflow as tf

    from serving.codec import TensorProto, from_ndarray, to_ndarray

    rng = np.random.default_rng(0)
    probs64 = rng.dirichlet(np.ones(10), size=64).astype(np.float32)
    probs256 = rng.dirichlet(np.ones(10), size=256).astype(np.float32)
    images = rng.integers(0, 256, size=(64, 32, 32, 3), dtype=np.uint8)

    def api_typed(array: np.ndarray, field: str, enum: int) -> Callable[[], TensorProto]:
        def build() -> TensorProto:
            proto = TensorProto(dtype=enum)
            for size in array.shape:
                proto.tensor_shape.dim.add(size=size)
            getattr(proto, field).extend(array.ravel().tolist())
            return proto

        return build

    cases = [
        ("probs f32[64,10]", "float_val", probs64, False, api_typed(probs64, "float_val", 1)),
        ("probs f32[256,10]", "float_val", probs256, False, api_typed(probs256, "float_val", 1)),
        ("images u8[64,32,32,3]", "tensor_content", images, True, None),
        ("images u8[64,32,32,3]", "int_val", images, False, api_typed(images, "int_val", 4)),
    ]
    rows = []
    for name, layout, array, content, api in cases:
        proto = from_ndarray(array, use_tensor_content=content)
        np.testing.assert_array_equal(to_ndarray(proto), tf.make_ndarray(proto))
        ours = _best_us(lambda: to_ndarray(proto), repeat)
        theirs = _best_us(lambda: tf.make_ndarray(proto), repeat)
        rows.append((f"{name} {layout}", "decode", ours, theirs, "make_ndarray", None))
        ours = _best_us(lambda: from_ndarray(array, use_tensor_content=content), repeat)
        theirs = _best_us(lambda: tf.make_tensor_proto(array), repeat)
        api_us = _best_us(api, repeat) if api is not None else None
        if api is not None:
            assert api() == proto
        rows.append((f"{name} {layout}", "encode", ours, theirs, "make_tensor_proto", api_us))
    return rows


def _differences() -> list[tuple[str, str, str, str]]:
    import tensorflow as tf
    from tensorflow.core.framework import types_pb2

    from serving.codec import TensorDecodeError, TensorProto, to_ndarray

    dt = types_pb2.DataType

    def proto(dtype: int, shape: list[int], **fields: object) -> TensorProto:
        message = TensorProto(dtype=dtype, **fields)
        for size in shape:
            message.tensor_shape.dim.add(size=size)
        return message

    cases = [
        ("splat float_val=[0.5], shape [2,2]", proto(dt.DT_FLOAT, [2, 2], float_val=[0.5])),
        ("float_val=[1,2,3], shape [2]", proto(dt.DT_FLOAT, [2], float_val=[1, 2, 3])),
        ("int64 scalar, int64_val=[5,6]", proto(dt.DT_INT64, [], int64_val=[5, 6])),
        ("uint8 int_val=[300,-1]", proto(dt.DT_UINT8, [2], int_val=[300, -1])),
        ("half half_val=[0x13C00] (bits>16)", proto(dt.DT_HALF, [1], half_val=[0x13C00])),
        ("f32 [0,3] + 4 stray content bytes", proto(dt.DT_FLOAT, [0, 3], tensor_content=b"abcd")),
        ("string in tensor_content", proto(dt.DT_STRING, [2], tensor_content=b"\x01\x02abc")),
        ("float8_e4m3fnuz float8_val", proto(dt.DT_FLOAT8_E4M3FNUZ, [2], float8_val=b"\x38")),
        ("bool tensor_content byte 2", proto(dt.DT_BOOL, [2], tensor_content=b"\x01\x02")),
    ]

    def show(decode: Callable[[], object]) -> str:
        try:
            value = decode()
        except (TensorDecodeError, tf.errors.InvalidArgumentError):
            return "refused"
        except Exception as err:  # tf.make_ndarray's own TypeError/ValueError/OverflowError
            return f"{type(err).__name__}"
        return np.array2string(np.asarray(value), separator=",").replace("\n", "")

    rows = []
    for name, message in cases:
        out_type = tf.dtypes.as_dtype(message.dtype)
        wire = message.SerializeToString()
        serving = show(lambda: tf.io.parse_tensor(wire, out_type=out_type).numpy())
        rows.append((name, serving, show(lambda: to_ndarray(message)),
                     show(lambda: tf.make_ndarray(message))))
    return rows


def _ratio(value: float) -> str:
    return f"{value:.2f}x" if value < 1 else f"{value:.1f}x"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="timeit rounds; the best counts")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error(f"--repeat must be >= 1, got {args.repeat}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    rows = _speed_rows(args.repeat)
    print(f"{'tensor':38} {'op':6} {'codec us':>9} {'tf us':>9} {'tf/codec':>8}  {'tf function':29}"
          f" {'API us':>8} {'API/codec':>9}")
    for name, op, ours, theirs, tf_name, api_us in rows:
        if op == "encode":
            tf_name += " (content)"  # what make_tensor_proto writes for these dtypes
        api = f"{api_us:8.1f} {_ratio(api_us / ours):>9}" if api_us is not None else ""
        print(f"{name:38} {op:6} {ours:9.1f} {theirs:9.1f} {_ratio(theirs / ours):>8}  "
              f"{tf_name:29} {api}")
    print()
    print(f"{'proto':36} {'TF Serving (FromProto)':24} {'serving.codec':24} tf.make_ndarray")
    for name, serving, ours, theirs in _differences():
        print(f"{name:36} {serving:24} {ours:24} {theirs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
