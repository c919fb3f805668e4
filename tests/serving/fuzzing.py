"""What the fuzz tests of the embedded server and of the gateway share: generators and checks.

Malformed TensorProtos for every DataType enum (`build_tensor`, the deterministic sweep of
`sweep_requests`), hypothesis strategies over whole PredictRequests (`predict_requests`),
wire-byte mutations (`mutate`, `EDITS`), the signatures read back from a server
(`fetch_signatures`), the refusal rule for bad input (`check_refusal`), the one valid request
(`valid_predict_request`) and this process's memory (`rss_bytes`). No fixtures and no tests
here: `test_fuzz.py`, `test_fuzz_wire.py` and `test_fuzz_gateway.py` import it.
"""

from __future__ import annotations

import gc

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck
from hypothesis import strategies as st
from tensorflow.core.example import example_pb2
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2

from serving.codec import _varint  # the wire varint the codec's fast encoder writes
from serving.signature import INIT_OP_SIGNATURE
from tests.serving.tiny_models import IMAGE_SHAPE, W_EXAMPLES, predict_request

CALL_TIMEOUT = 10.0  # seconds; a call that takes longer counts as a hang
RSS_GROWTH_LIMIT = 300 * 2**20
BAD_INPUT_CODES = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                             grpc.StatusCode.FAILED_PRECONDITION})
LABELS = {"stable": 1, "canary": 2}  # conftest's models.config, model `tiny`
INIT_OP_KEY = INIT_OP_SIGNATURE
PREDICT_PATH = "/tensorflow.serving.PredictionService/Predict"

DT = types_pb2.DataType
ALL_DTYPES = tuple(v.number for v in DT.DESCRIPTOR.values)  # 0..33 and the *_REF types
INVALID_DTYPES = (-1, -(2**31), 34, 99, 100, 134, 1000, 2**31 - 1)
SMALL_DIMS = (0, 1, 2, 3, 8)
HUGE_DIMS = (2**31, 2**40, 2**62, 2**63 - 1)  # any of them makes a tensor > 2 GiB
NEGATIVE_DIMS = (-1, -7, -(2**63))
CONTENT_CAP = 1 << 20  # fill tensor_content only up to this many bytes

# Bytes per element for the enums TF can hold (DT_STRING: varint-prefixed list, below).
ITEMSIZE = {DT.DT_FLOAT: 4, DT.DT_DOUBLE: 8, DT.DT_INT32: 4, DT.DT_UINT8: 1, DT.DT_INT16: 2,
            DT.DT_INT8: 1, DT.DT_COMPLEX64: 8, DT.DT_INT64: 8, DT.DT_BOOL: 1, DT.DT_QINT8: 1,
            DT.DT_QUINT8: 1, DT.DT_QINT32: 4, DT.DT_BFLOAT16: 2, DT.DT_QINT16: 2,
            DT.DT_QUINT16: 2, DT.DT_UINT16: 2, DT.DT_COMPLEX128: 16, DT.DT_HALF: 2,
            DT.DT_UINT32: 4, DT.DT_UINT64: 8, **{e: 1 for e in range(24, 34)}}
# The typed field TensorFlow reads for each enum (Tensor::FromProto's FromProtoField).
RIGHT_FIELD = {DT.DT_FLOAT: "float_val", DT.DT_DOUBLE: "double_val", DT.DT_STRING: "string_val",
               DT.DT_COMPLEX64: "scomplex_val", DT.DT_COMPLEX128: "dcomplex_val",
               DT.DT_INT64: "int64_val", DT.DT_BOOL: "bool_val", DT.DT_BFLOAT16: "half_val",
               DT.DT_HALF: "half_val", DT.DT_UINT32: "uint32_val", DT.DT_UINT64: "uint64_val",
               **{e: "int_val" for e in (3, 4, 5, 6, 11, 12, 13, 15, 16, 17, 29, 30, 31, 32)},
               **{e: "float8_val" for e in (24, 25, 26, 27, 28, 33)}}
FIELDS = ("float_val", "double_val", "int_val", "half_val", "int64_val", "uint32_val",
          "uint64_val", "bool_val", "string_val", "scomplex_val", "dcomplex_val", "float8_val")
PAYLOADS = ("none", "content", "content", "short", "long", "random_bytes", "field", "field",
            "wrong_field", "handles")


FUZZ_SETTINGS = dict(deadline=None, derandomize=True, database=None, print_blob=False,
                     suppress_health_check=list(HealthCheck))

RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, size=(4, *IMAGE_SHAPE), dtype=np.uint8)


# -- helpers ---------------------------------------------------------------------------------------
def rss_bytes() -> int:
    """This process's resident set size (the server runs in-process)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line in /proc/self/status")


def call(tally, rpc: str, method, request):
    """Send one request; return (response, None) or (None, RpcError), counting the outcome in
    `tally` (the test's `FuzzTally`)."""
    try:
        response = method(request, timeout=CALL_TIMEOUT)
    except grpc.RpcError as err:
        tally.add(rpc, err.code().name)
        assert err.code() is not grpc.StatusCode.DEADLINE_EXCEEDED, (
            f"{rpc} hung for more than {CALL_TIMEOUT} s on {_short(request)}")
        return None, err
    tally.add(rpc, "OK")
    return response, None


def assert_unharmed(stub, baseline) -> None:
    """The server answers the first valid request as it did before any fuzzing, and has not
    grown by more than RSS_GROWTH_LIMIT since (every fuzz test ends with this)."""
    response = stub.Predict(baseline["request"], timeout=CALL_TIMEOUT)
    np.testing.assert_allclose(make_ndarray(response.outputs["probabilities"]),
                               baseline["probabilities"], rtol=1e-6, atol=1e-7)
    gc.collect()
    growth = rss_bytes() - baseline["rss"]
    assert growth < RSS_GROWTH_LIMIT, f"RSS grew by {growth / 2**20:.0f} MiB"


def _short(request, limit: int = 600) -> str:
    text = repr(request) if isinstance(request, bytes) else str(request)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


def check_refusal(err: grpc.RpcError, request, allowed=BAD_INPUT_CODES) -> None:
    assert err.code() in allowed, (
        f"{err.code().name} ({err.details()!r}) for malformed input; expected one of "
        f"{sorted(c.name for c in allowed)}. Request: {_short(request)}")
    assert err.details(), f"{err.code().name} with empty details for {_short(request)}"


def make_ndarray(proto: tensor_pb2.TensorProto) -> np.ndarray:
    return tf.make_ndarray(proto)


def example(x) -> example_pb2.Example:
    ex = example_pb2.Example()
    ex.features.feature["x"].float_list.value.extend(x)
    return ex


def softmax_scores(x: np.ndarray) -> np.ndarray:
    logits = x.astype(np.float32) @ W_EXAMPLES
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def fetch_signatures(stub) -> dict:
    """(model, version) -> signature key -> (inputs, outputs), each alias -> (dtype, dims),
    read with GetModelMetadata (the init op excluded)."""
    table = {}
    for name, versions in (("tiny", (1, 2)), ("examples", (1,))):
        for version in versions:
            request = get_model_metadata_pb2.GetModelMetadataRequest(
                metadata_field=["signature_def"])
            request.model_spec.name = name
            request.model_spec.version.value = version
            response = stub.GetModelMetadata(request, timeout=CALL_TIMEOUT)
            sig_map = get_model_metadata_pb2.SignatureDefMap()
            assert response.metadata["signature_def"].Unpack(sig_map)
            table[name, version] = {
                key: tuple({alias: (info.dtype, [d.size for d in info.tensor_shape.dim])
                            for alias, info in side.items()}
                           for side in (sig.inputs, sig.outputs))
                for key, sig in sig_map.signature_def.items() if key != INIT_OP_KEY}
    return table


# -- building tensors ------------------------------------------------------------------------------
def _string_items(rng: np.random.Generator, n: int) -> list[bytes]:
    """Half serialized tf.Examples with a random (sometimes NaN/Inf) `x`, half random bytes."""
    items = []
    for _ in range(n):
        if rng.random() < 0.5:
            x = rng.normal(0, 3, 2).astype(np.float32)
            if rng.random() < 0.2:
                x[rng.integers(0, 2)] = rng.choice([np.nan, np.inf, -np.inf])
            items.append(example(x.tolist()).SerializeToString())
        else:
            items.append(rng.bytes(int(rng.integers(0, 13))))
    return items


def _field_values(field: str, k: int, rng: np.random.Generator):
    if field == "string_val":
        return _string_items(rng, k)
    if field == "float8_val":
        return rng.bytes(k)
    if field in ("float_val", "scomplex_val", "double_val", "dcomplex_val"):
        wide = field in ("double_val", "dcomplex_val")
        values = rng.normal(0, 100, k).astype(np.float64 if wide else np.float32)
        specials = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e308 if wide else 3.4e38, 1e-45]
    elif field in ("int_val", "half_val"):
        values = rng.integers(-(2**31), 2**31, k)
        specials = [0, -1, 255, 256, -(2**31), 2**31 - 1]
    elif field == "int64_val":
        values = rng.integers(-(2**63), 2**63 - 1, k, endpoint=True)
        specials = [0, -1, 2**63 - 1, -(2**63)]
    elif field == "uint32_val":
        values = rng.integers(0, 2**32, k, dtype=np.uint64)
        specials = [0, 2**32 - 1]
    elif field == "uint64_val":
        values = rng.integers(0, 2**64 - 1, k, dtype=np.uint64, endpoint=True)
        specials = [0, 2**64 - 1]
    else:  # bool_val
        values = rng.integers(0, 2, k).astype(bool)
        specials = [True, False]
    if k:
        for i in rng.integers(0, k, size=min(k, 3)):
            values[i] = specials[int(rng.integers(0, len(specials)))]
    return values.tolist()


def element_count(dims) -> int | None:
    if any(d < 0 for d in dims):
        return None
    return int(np.prod(dims, dtype=object)) if dims else 1


def build_tensor(dtype: int, dims, payload: str, seed: int,
                 unknown_rank: bool = False) -> tensor_pb2.TensorProto:
    """A TensorProto with this (possibly invalid) dtype and shape and the kind of payload asked."""
    rng = np.random.default_rng(seed)
    proto = tensor_pb2.TensorProto()
    proto.dtype = dtype
    for d in dims:
        proto.tensor_shape.dim.add().size = d
    proto.tensor_shape.unknown_rank = unknown_rank
    n = element_count(dims)
    small = n is not None and n <= 4096
    if payload in ("content", "short", "long"):
        if dtype == DT.DT_STRING and small and n:
            items = _string_items(rng, n)
            data = b"".join(_varint(len(i)) for i in items) + b"".join(items)
        elif dtype in ITEMSIZE and n is not None and n * ITEMSIZE[dtype] <= CONTENT_CAP:
            data = rng.bytes(n * ITEMSIZE[dtype])
        else:
            data = rng.bytes(int(rng.integers(1, 17)))
        if payload == "short":
            data = data[: max(0, len(data) - int(rng.integers(1, 4)))]
        elif payload == "long":
            data += rng.bytes(int(rng.integers(1, 9)))
        proto.tensor_content = data
    elif payload == "random_bytes":
        proto.tensor_content = rng.bytes(int(rng.integers(0, 65)))
    elif payload in ("field", "wrong_field"):
        right = RIGHT_FIELD.get(dtype)
        field = right if payload == "field" and right else FIELDS[int(rng.integers(len(FIELDS)))]
        if small:
            choices = [k for k in (0, 1, 2, n - 1, n, n + 1) if k >= 0]
        else:
            choices = [0, 1, 2, 5]
        k = choices[int(rng.integers(len(choices)))]
        values = _field_values(field, k, rng)
        if field == "float8_val":
            proto.float8_val = values
        else:
            getattr(proto, field).extend(values)
    elif payload == "handles":
        proto.resource_handle_val.add(device="/job:x", name=rng.bytes(4).hex())
        proto.variant_val.add(type_name="fuzz", metadata=rng.bytes(8))
    return proto


def mutate(data: bytes, edits) -> bytes:
    """Apply (op, position, byte) edits to serialized bytes: flip, set, delete, insert, cut."""
    raw = bytearray(data)
    for op, pos, value in edits:
        if not raw:
            raw.append(value)
            continue
        i = pos % len(raw)
        if op == "flip":
            raw[i] ^= 1 << (value % 8)
        elif op == "set":
            raw[i] = value
        elif op == "delete":
            del raw[i: i + 1 + value % 4]
        elif op == "insert":
            raw[i:i] = bytes([value]) * (1 + value % 3)
        else:  # cut
            del raw[i:]
    return bytes(raw)


EDITS = st.lists(st.tuples(st.sampled_from(["flip", "flip", "set", "set", "delete", "insert",
                                            "cut"]),
                           st.integers(0, 2**16), st.integers(0, 255)), min_size=1, max_size=3)
NAMES = st.text(max_size=12)


# -- strategies ------------------------------------------------------------------------------------
@st.composite
def shapes(draw, want_dims):
    """Mostly the signature's shape with a small batch, else mutated, random, huge or negative."""
    r = draw(st.integers(0, 9))
    base = [draw(st.integers(0, 3)) if d == -1 else d for d in want_dims]
    if r < 5:
        return base
    if r < 7:
        op = draw(st.sampled_from(["drop", "add", "change"]))
        i = draw(st.integers(0, len(base)))
        if op == "drop" and base:
            del base[min(i, len(base) - 1)]
        elif op == "add":
            base.insert(i, draw(st.sampled_from(SMALL_DIMS)))
        elif base:
            base[min(i, len(base) - 1)] = draw(st.sampled_from(SMALL_DIMS + NEGATIVE_DIMS))
        return base
    if r < 9:
        rank = draw(st.integers(0, 6))
        return draw(st.lists(st.sampled_from(SMALL_DIMS), min_size=rank, max_size=rank))
    dims = draw(st.lists(st.sampled_from(SMALL_DIMS), max_size=5))
    dims.insert(draw(st.integers(0, len(dims))), draw(st.sampled_from(HUGE_DIMS + NEGATIVE_DIMS)))
    return dims


@st.composite
def tensors(draw, want_dtype: int, want_dims, notes=None):
    seed = draw(st.integers(0, 2**32 - 1))
    if draw(st.integers(0, 9)) == 0:  # random or mutated bytes parsed as a TensorProto
        data = draw(st.binary(max_size=64))
        try:
            proto = tensor_pb2.TensorProto.FromString(data)
        except DecodeError:
            valid = build_tensor(want_dtype, [2 if d == -1 else d for d in want_dims],
                                 "content", seed)
            try:
                proto = tensor_pb2.TensorProto.FromString(
                    mutate(valid.SerializeToString(), draw(EDITS)))
            except DecodeError:
                proto = tensor_pb2.TensorProto()
        if notes is not None:
            notes["TensorProto parsed from random/mutated bytes"] += 1
        return proto
    r = draw(st.integers(0, 9))
    if r < 5:
        dtype = want_dtype
    elif r < 9:
        dtype = draw(st.sampled_from(ALL_DTYPES))
    else:
        dtype = draw(st.sampled_from(INVALID_DTYPES))
    dims = draw(shapes(want_dims))
    payload = draw(st.sampled_from(PAYLOADS))
    unknown_rank = draw(st.integers(0, 9)) == 0
    return build_tensor(dtype, dims, payload, seed, unknown_rank)


@st.composite
def model_specs(draw, spec, names=("tiny", "examples")):
    """Fill `spec` (a ModelSpec) with a known or random name, version or label."""
    r = draw(st.integers(0, 19))
    spec.name = (names[0] if r < 11 else names[-1] if r < 17
                 else draw(NAMES | st.sampled_from(["", "TINY", "tiny ", "tiny/1", "../tiny"])))
    v = draw(st.integers(0, 9))
    if 6 <= v < 8:
        spec.version.value = draw(st.sampled_from([0, 1, 2, 3]))
    elif v == 8:
        spec.version.value = draw(st.integers(-(2**63), 2**63 - 1))
    elif v == 9:
        spec.version_label = draw(st.sampled_from(["stable", "canary", "", "latest"]) | NAMES)
    return spec


@st.composite
def predict_requests(draw, sigs, notes=None):
    """sigs: model -> signature key -> (inputs, outputs) of the latest versions; `notes` (a
    Counter) counts notable kinds drawn."""
    request = predict_pb2.PredictRequest()
    spec = draw(model_specs(request.model_spec))
    known = sigs.get(spec.name, sigs["tiny"])
    s = draw(st.integers(0, 9))
    if s < 4:
        key = ""
    elif s < 8:
        key = draw(st.sampled_from(sorted(known)))
    else:
        key = draw(st.sampled_from([INIT_OP_KEY, "nope", "SERVING_DEFAULT"]) | NAMES)
    spec.signature_name = key
    inputs, outputs = known.get(key or "serving_default", known["serving_default"])
    alias, (dtype, dims) = draw(st.sampled_from(sorted(inputs.items())))
    mode = draw(st.integers(0, 9))
    names = []
    if mode < 6:
        names = [alias]
    elif mode == 7:
        names = [alias, *draw(st.lists(NAMES.filter(lambda n: n != alias), min_size=1,
                                       max_size=2, unique=True))]
    elif mode == 8:
        names = [draw(NAMES.filter(lambda n: n != alias))]
    elif mode == 9:
        names = draw(st.lists(NAMES, min_size=1, max_size=4, unique=True))
    for name in names:
        request.inputs[name].CopyFrom(draw(tensors(dtype, dims, notes)))
    if draw(st.integers(0, 9)) >= 6:
        request.output_filter.extend(draw(st.lists(
            st.sampled_from(sorted(outputs) + ["nope", "", "classes", "outputs"]) | NAMES,
            max_size=4)))
    return request


# -- the one valid request and the deterministic sweep ---------------------------------------------
def valid_predict_request() -> predict_pb2.PredictRequest:
    """`IMAGES` to `tiny` version 1 as uint8 `tensor_content`: the request every fuzz test's
    baseline and final check send."""
    return predict_request(IMAGES, version=1)


SWEEP_SHAPES = ([2, 8, 8, 3], [0, 8, 8, 3], [8, 8, 3], [], [0], [1, 8, 8, 3, 1], [2, 8, 8],
                [1, 1, 1, 1, 1, 1], [2**40, 8, 8, 3], [-1, 8, 8, 3], [2**31, 2**31, 2**31, 3])
SWEEP_PAYLOADS = ("none", "content", "field")
SWEEP_SIZE = len(ALL_DTYPES + INVALID_DTYPES) * len(SWEEP_SHAPES) * len(SWEEP_PAYLOADS)


def sweep_requests():
    """Every DataType enum (and invalid numbers) x `SWEEP_SHAPES` (ranks 0..6, zero, huge and
    negative dims) x no data, exact `tensor_content` or the typed field, to `tiny`'s `images`:
    yields (request, valid, where); `valid` is True for uint8 [b, 8, 8, 3] only."""
    count = 0
    for dtype in ALL_DTYPES + INVALID_DTYPES:
        for dims in SWEEP_SHAPES:
            for payload in SWEEP_PAYLOADS:
                request = predict_pb2.PredictRequest()
                request.model_spec.name = "tiny"
                request.inputs["images"].CopyFrom(build_tensor(dtype, dims, payload, seed=count))
                count += 1
                valid = dtype == DT.DT_UINT8 and dims in ([2, 8, 8, 3], [0, 8, 8, 3])
                yield request, valid, f"dtype {dtype}, shape {dims}, payload {payload}"
