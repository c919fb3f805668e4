"""Tests for serving.codec: TF Serving's decoding rules, round trips and agreement with TensorFlow.

The reference for "what TF Serving does" is TensorFlow's own C++ `Tensor::FromProto`, which
`tf.io.parse_tensor` runs in this process on a serialized TensorProto (the ParseTensor kernel calls
the device's MakeTensorFromProto -> Tensor::FromProto, the same function TF Serving's Predict
calls). Every hand-written expectation below is checked against it too.
"""

from __future__ import annotations

import time
import tracemalloc

import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tensorflow.core.framework import tensor_pb2, types_pb2

from common.errors import UsageError
from serving.codec import (
    TENSOR_PARSING_ERROR,
    TensorDecodeError,
    from_ndarray,
    numpy_to_tf_dtype,
    tf_dtype_to_numpy,
    to_ndarray,
)

DT = types_pb2.DataType
TensorProto = tensor_pb2.TensorProto
SUB_BYTE_INTS = {np.dtype(t) for t in (ml_dtypes.int4, ml_dtypes.uint4, ml_dtypes.int2,
                                       ml_dtypes.uint2)}
HYPOTHESIS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def proto(dtype: int, shape: list[int] | None, *, unknown_rank: bool = False,
          **fields: object) -> TensorProto:
    message = TensorProto(dtype=dtype, **fields)
    for size in shape or []:
        message.tensor_shape.dim.add(size=size)
    if unknown_rank:
        message.tensor_shape.unknown_rank = True
    return message


def serving_decode(message: TensorProto) -> np.ndarray | None:
    """What Tensor::FromProto makes of `message`, or None where it refuses it."""
    try:
        out_type = tf.dtypes.as_dtype(message.dtype).base_dtype
    except (TypeError, ValueError):
        out_type = tf.float32  # FromProto refuses the proto anyway
    try:
        return np.asarray(tf.io.parse_tensor(message.SerializeToString(), out_type).numpy())
    except tf.errors.InvalidArgumentError:
        return None


def assert_same(ours: np.ndarray, theirs: np.ndarray) -> None:
    """Same shape and the same element bits (sub-byte ints: the same values)."""
    theirs = np.asarray(theirs)
    assert ours.shape == theirs.shape
    if ours.dtype == object or theirs.dtype == object:
        assert ours.tolist() == theirs.tolist()
    elif ours.dtype in SUB_BYTE_INTS:
        np.testing.assert_array_equal(ours.astype(np.int8), theirs.astype(np.int8))
    else:
        assert ours.dtype.itemsize == theirs.dtype.itemsize
        assert ours.tobytes() == np.ascontiguousarray(theirs).tobytes()


def q(name: str, base: str, values: list[int]) -> np.ndarray:
    return np.array(values, dtype=base).view(np.dtype([(name, base)]))


def _float_samples(dtype: object) -> np.ndarray:
    return np.array([0.0, -0.0, 1.5, np.nan, np.inf, -2.0], np.float32).astype(dtype)


# One (2, 3) array per DataType, with edge values; plus the field TF Serving puts it in.
SAMPLES: dict[int, tuple[np.ndarray, str]] = {
    DT.DT_FLOAT: (np.array([0.0, -0.0, 1.5, np.nan, np.inf, -3.4e38], np.float32), "float_val"),
    DT.DT_DOUBLE: (np.array([0.0, -0.0, 1e-300, np.nan, -np.inf, 1.8e308]), "double_val"),
    DT.DT_HALF: (np.array([0.0, -0.0, 1.5, np.nan, np.inf, 65504], np.float16), "half_val"),
    DT.DT_BFLOAT16: (_float_samples(ml_dtypes.bfloat16), "half_val"),
    DT.DT_INT8: (np.array([-128, -1, 0, 1, 100, 127], np.int8), "int_val"),
    DT.DT_INT16: (np.array([-32768, -1, 0, 1, 300, 32767], np.int16), "int_val"),
    DT.DT_INT32: (np.array([-2**31, -1, 0, 1, 2**20, 2**31 - 1], np.int32), "int_val"),
    DT.DT_INT64: (np.array([-2**63, -1, 0, 1, 2**40, 2**63 - 1], np.int64), "int64_val"),
    DT.DT_UINT8: (np.array([0, 1, 127, 128, 254, 255], np.uint8), "int_val"),
    DT.DT_UINT16: (np.array([0, 1, 127, 128, 2**15, 2**16 - 1], np.uint16), "int_val"),
    DT.DT_UINT32: (np.array([0, 1, 127, 128, 2**31, 2**32 - 1], np.uint32), "uint32_val"),
    DT.DT_UINT64: (np.array([0, 1, 127, 128, 2**63, 2**64 - 1], np.uint64), "uint64_val"),
    DT.DT_BOOL: (np.array([True, False, True, True, False, False]), "bool_val"),
    DT.DT_STRING: (np.array([b"", b"a", b"\x00\xff", "héllo".encode(), b"x" * 300, b"z"],
                            dtype=object), "string_val"),
    DT.DT_COMPLEX64: (np.array([1 + 2j, -0.0, np.nan, complex(0, np.inf), 3.5, -1j],
                               np.complex64), "scomplex_val"),
    DT.DT_COMPLEX128: (np.array([1 + 2j, -0.0, np.nan, complex(0, np.inf), 3.5, -1j]),
                       "dcomplex_val"),
    DT.DT_QINT8: (q("qint8", "i1", [-128, -1, 0, 1, 5, 127]), "int_val"),
    DT.DT_QUINT8: (q("quint8", "u1", [0, 1, 5, 128, 200, 255]), "int_val"),
    DT.DT_QINT16: (q("qint16", "<i2", [-32768, -1, 0, 1, 5, 32767]), "int_val"),
    DT.DT_QUINT16: (q("quint16", "<u2", [0, 1, 5, 128, 40000, 65535]), "int_val"),
    DT.DT_QINT32: (q("qint32", "<i4", [-2**31, -1, 0, 1, 5, 2**31 - 1]), "int_val"),
    DT.DT_INT4: (np.array([-8, -1, 0, 1, 3, 7], ml_dtypes.int4), "int_val"),
    DT.DT_UINT4: (np.array([0, 1, 7, 8, 9, 15], ml_dtypes.uint4), "int_val"),
    DT.DT_INT2: (np.array([-2, -1, 0, 1, 1, 0], ml_dtypes.int2), "int_val"),
    DT.DT_UINT2: (np.array([0, 1, 2, 3, 0, 1], ml_dtypes.uint2), "int_val"),
    DT.DT_FLOAT8_E5M2: (_float_samples(ml_dtypes.float8_e5m2), "float8_val"),
    DT.DT_FLOAT8_E4M3FN: (_float_samples(ml_dtypes.float8_e4m3fn), "float8_val"),
    DT.DT_FLOAT8_E4M3FNUZ: (_float_samples(ml_dtypes.float8_e4m3fnuz), "float8_val"),
    DT.DT_FLOAT8_E4M3B11FNUZ: (_float_samples(ml_dtypes.float8_e4m3b11fnuz), "float8_val"),
    DT.DT_FLOAT8_E5M2FNUZ: (_float_samples(ml_dtypes.float8_e5m2fnuz), "float8_val"),
    DT.DT_FLOAT4_E2M1FN: (np.array([0, -1, 0.5, 2, 6, -6], np.float32).astype(
        ml_dtypes.float4_e2m1fn), "float8_val"),
}
SAMPLE_IDS = [DT.Name(e) for e in SAMPLES]


def sample(enum: int) -> np.ndarray:
    return SAMPLES[enum][0].reshape(2, 3)


def field_proto(array: np.ndarray, enum: int, field: str) -> TensorProto:
    """The proto TF's AsProtoField writes, built slowly through the protobuf API."""
    message = TensorProto(dtype=enum)
    message.tensor_shape.SetInParent()
    for size in array.shape:
        message.tensor_shape.dim.add(size=size)
    flat = array.reshape(-1)
    if field == "float8_val":
        message.float8_val = flat.tobytes()
    elif field in ("scomplex_val", "dcomplex_val"):
        getattr(message, field).extend(flat.view(flat.real.dtype).tolist())
    elif field == "half_val":
        message.half_val.extend(flat.view(np.uint16).tolist())
    elif flat.dtype in SUB_BYTE_INTS:
        message.int_val.extend(flat.astype(np.int32).tolist())
    elif flat.dtype.names:  # quantized
        message.int_val.extend(flat.view(flat.dtype[0]).tolist())
    else:
        getattr(message, field).extend(flat.tolist())
    return message


# --- FromProto rules, pinned and checked against TensorFlow itself -----------------------------

def _f32(values: object) -> np.ndarray:
    return np.array(values, np.float32)


RULES = [
    ("splat", proto(DT.DT_FLOAT, [2, 3], float_val=[1.0]), np.ones((2, 3), np.float32)),
    ("splat_half", proto(DT.DT_FLOAT, [2, 2], float_val=[0.5]), np.full((2, 2), 0.5, np.float32)),
    ("rest_is_last", proto(DT.DT_FLOAT, [2, 2], float_val=[1, 2]), _f32([[1, 2], [2, 2]])),
    ("extra_values_ignored", proto(DT.DT_FLOAT, [2], float_val=[1, 2, 3]), _f32([1, 2])),
    ("scalar_first_of_two", proto(DT.DT_INT64, [], int64_val=[5, 6]), np.array(5, np.int64)),
    ("no_values_zeros", proto(DT.DT_INT32, [3]), np.zeros(3, np.int32)),
    ("other_fields_ignored", proto(DT.DT_FLOAT, [2], int_val=[1, 2], double_val=[3.0]),
     np.zeros(2, np.float32)),
    ("uint8_wraps", proto(DT.DT_UINT8, [3], int_val=[300, -1, 255]),
     np.array([44, 255, 255], np.uint8)),
    ("int16_wraps", proto(DT.DT_INT16, [2], int_val=[-5, 70000]), np.array([-5, 4464], np.int16)),
    ("quint16_wraps", proto(DT.DT_QUINT16, [2], int_val=[-5]), q("quint16", "<u2", [65531] * 2)),
    ("half_low_16_bits", proto(DT.DT_HALF, [2], half_val=[0x3C00, 0x13C00]),
     np.ones(2, np.float16)),
    ("bfloat16_half_val", proto(DT.DT_BFLOAT16, [3], half_val=[0x3F80]),
     np.ones(3, ml_dtypes.bfloat16)),
    ("bfloat16_not_int_val", proto(DT.DT_BFLOAT16, [2], int_val=[0x3F80]),
     np.zeros(2, ml_dtypes.bfloat16)),
    ("complex_odd_number_ignored", proto(DT.DT_COMPLEX64, [2], scomplex_val=[1, 2, 3]),
     np.array([1 + 2j, 1 + 2j], np.complex64)),
    ("complex_half_pair_zeros", proto(DT.DT_COMPLEX64, [2], scomplex_val=[1]),
     np.zeros(2, np.complex64)),
    ("complex128_pairs", proto(DT.DT_COMPLEX128, [2], dcomplex_val=[1, 2, 3, 4, 5]),
     np.array([1 + 2j, 3 + 4j])),
    ("bool_splat", proto(DT.DT_BOOL, [3], bool_val=[False, True]), np.array([False, True, True])),
    ("uint64_max", proto(DT.DT_UINT64, [2], uint64_val=[2**64 - 1, 3]),
     np.array([2**64 - 1, 3], np.uint64)),
    ("int4_low_nibble", proto(DT.DT_INT4, [3], int_val=[1, 7, 9]),
     np.array([1, 7, -7], ml_dtypes.int4)),
    ("uint2_low_bits", proto(DT.DT_UINT2, [3], int_val=[1, 3, 5]),
     np.array([1, 3, 1], ml_dtypes.uint2)),
    ("int4_content", proto(DT.DT_INT4, [3], tensor_content=b"\x01\x09\x7f"),
     np.array([1, -7, -1], ml_dtypes.int4)),
    ("float8_splat", proto(DT.DT_FLOAT8_E4M3FN, [3], float8_val=b"\x01\x02"),
     np.array([1, 2, 2], np.uint8).view(ml_dtypes.float8_e4m3fn)),
    ("float4_float8_val", proto(DT.DT_FLOAT4_E2M1FN, [2], float8_val=b"\x01\x02"),
     np.array([0.5, 1], ml_dtypes.float4_e2m1fn)),
    ("qint8", proto(DT.DT_QINT8, [2], int_val=[5, -6]), q("qint8", "i1", [5, -6])),
    ("string_splat", proto(DT.DT_STRING, [3], string_val=[b"a", b"b"]),
     np.array([b"a", b"b", b"b"], object)),
    ("string_zeros", proto(DT.DT_STRING, [2]), np.array([b"", b""], object)),
    ("string_content", proto(DT.DT_STRING, [2], tensor_content=b"\x01\x02abc"),
     np.array([b"a", b"bc"], object)),
    ("string_content_5_byte_varint",
     proto(DT.DT_STRING, [1], tensor_content=b"\x81\x80\x80\x80\x10a"), np.array([b"a"], object)),
    ("string_content_6_byte_varint",
     proto(DT.DT_STRING, [1], tensor_content=b"\x81\x80\x80\x80\x80\x00a"), None),
    ("string_content_extra_byte", proto(DT.DT_STRING, [1], tensor_content=b"\x01ab"), None),
    ("string_content_missing_byte", proto(DT.DT_STRING, [2], tensor_content=b"\x01\x02ab"), None),
    ("bool_content_byte_2", proto(DT.DT_BOOL, [2], tensor_content=b"\x01\x02"), None),
    ("content_truncated", proto(DT.DT_FLOAT, [2], tensor_content=b"\0" * 7), None),
    ("content_oversized", proto(DT.DT_FLOAT, [2], tensor_content=b"\0" * 9), None),
    ("content_wins", proto(DT.DT_FLOAT, [2], tensor_content=_f32([1, 2]).tobytes(),
                           float_val=[9.0]), _f32([1, 2])),
    ("empty_ignores_content", proto(DT.DT_FLOAT, [0, 3], tensor_content=b"abcde"),
     np.zeros((0, 3), np.float32)),
    ("empty_ignores_values", proto(DT.DT_UINT8, [3, 0], int_val=[1, 2]),
     np.zeros((3, 0), np.uint8)),
    ("empty_needs_valid_dtype", proto(99, [0]), None),
    ("dtype_invalid", proto(DT.DT_INVALID, [1], float_val=[1.0]), None),
    ("dtype_unknown", proto(99, [1]), None),
    ("dtype_reference", proto(DT.DT_FLOAT_REF, [1], float_val=[1.0]), None),
    ("negative_dim", proto(DT.DT_FLOAT, [-1]), None),
    ("negative_second_dim", proto(DT.DT_FLOAT, [2, -3], float_val=[1]), None),
    ("255_dims", proto(DT.DT_FLOAT, [1] * 255, float_val=[1]), None),
    ("int64_overflow_before_zero", proto(DT.DT_FLOAT, [2**62, 2, 0]), None),
    ("unknown_rank_ignored", proto(DT.DT_FLOAT, [2], unknown_rank=True, float_val=[1]),
     np.ones(2, np.float32)),
    ("unknown_rank_scalar", proto(DT.DT_FLOAT, None, unknown_rank=True, float_val=[3]),
     np.array(3, np.float32)),
]


@pytest.mark.parametrize(("message", "expected"), [r[1:] for r in RULES], ids=[r[0] for r in RULES])
def test_decoding_follows_tensor_from_proto(message: TensorProto, expected: np.ndarray | None):
    served = serving_decode(message)
    if expected is None:
        assert served is None, "TensorFlow accepts this proto; the expectation is wrong"
        with pytest.raises(TensorDecodeError):
            to_ndarray(message)
        return
    assert served is not None, "TensorFlow refuses this proto; the expectation is wrong"
    assert_same(served, expected)
    ours = to_ndarray(message)
    assert ours.dtype == expected.dtype
    assert_same(ours, expected)


def test_serving_accepts_what_make_ndarray_refuses():
    """TF Serving decodes these; tf.make_ndarray raises, so a make_ndarray server would refuse."""
    accepted_by_serving = [
        proto(DT.DT_FLOAT, [2], float_val=[1, 2, 3]),
        proto(DT.DT_UINT8, [2], int_val=[300, -1]),
        proto(DT.DT_HALF, [1], half_val=[0x13C00]),
        proto(DT.DT_FLOAT, [0, 3], tensor_content=b"abcd"),
        proto(DT.DT_STRING, [2], tensor_content=b"\x01\x02abc"),
        proto(DT.DT_FLOAT8_E4M3FNUZ, [2], float8_val=b"\x38"),
    ]
    for message in accepted_by_serving:
        assert_same(to_ndarray(message), serving_decode(message))
        with pytest.raises((ValueError, TypeError, OverflowError)):
            tf.make_ndarray(message)
    # ... and the splat that the issue suspected is decoded the same by both.
    splat = proto(DT.DT_FLOAT, [2, 2], float_val=[0.5])
    assert_same(to_ndarray(splat), tf.make_ndarray(splat))
    # The other way round: make_ndarray takes bool bytes other than 0/1 that TF Serving refuses.
    bad_bool = proto(DT.DT_BOOL, [2], tensor_content=b"\x01\x02")
    assert tf.make_ndarray(bad_bool).shape == (2,)
    assert serving_decode(bad_bool) is None


# --- round trips --------------------------------------------------------------------------------

@pytest.mark.parametrize("use_tensor_content", [False, True], ids=["fields", "content"])
@pytest.mark.parametrize("enum", list(SAMPLES), ids=SAMPLE_IDS)
def test_round_trip_every_dtype(enum: int, use_tensor_content: bool):
    array, field = SAMPLES[enum][0].reshape(2, 3), SAMPLES[enum][1]
    message = from_ndarray(array, use_tensor_content=use_tensor_content)
    assert message.dtype == enum
    assert [d.size for d in message.tensor_shape.dim] == [2, 3]
    if use_tensor_content:
        assert message.tensor_content and len(getattr(message, field)) == 0
    else:
        assert not message.tensor_content and len(getattr(message, field)) > 0
        # The wire-format fast path builds exactly the proto the protobuf API (and AsProtoField)
        # builds.
        reference = field_proto(array, enum, field)
        assert message == reference
        assert message.SerializeToString(deterministic=True) == reference.SerializeToString(
            deterministic=True)
    decoded = to_ndarray(message)
    assert decoded.dtype == array.dtype
    assert_same(decoded, array)
    assert_same(serving_decode(message), array)  # the real server reads what we send


@pytest.mark.parametrize("enum", list(SAMPLES), ids=SAMPLE_IDS)
def test_agrees_with_make_ndarray_and_make_tensor_proto(enum: int):
    array = sample(enum)
    made = tf.make_tensor_proto(array)
    assert_same(to_ndarray(made), tf.make_ndarray(made))
    assert_same(to_ndarray(made), array)
    for use_tensor_content in (False, True):
        ours = from_ndarray(array, use_tensor_content=use_tensor_content)
        try:
            theirs = tf.make_ndarray(ours)
        except (TypeError, ValueError):
            # make_ndarray cannot read string tensor_content nor the *fnuz float8 types in
            # float8_val (TF Serving can: see the round trip test).
            assert (enum, use_tensor_content) == (DT.DT_STRING, True) or (
                "FNUZ" in DT.Name(enum) and not use_tensor_content)
            continue
        assert_same(theirs, array)


@pytest.mark.parametrize("use_tensor_content", [False, True], ids=["fields", "content"])
def test_scalars_and_empty_tensors(use_tensor_content: bool):
    scalar = from_ndarray(np.float32(2.5), use_tensor_content=use_tensor_content)
    assert len(scalar.tensor_shape.dim) == 0
    assert to_ndarray(scalar).shape == () and to_ndarray(scalar) == np.float32(2.5)
    for array in (np.zeros((0, 3), np.float32), np.zeros((4, 0), np.uint8),
                  np.array([], dtype=object)):
        message = from_ndarray(array, use_tensor_content=use_tensor_content)
        assert message.ByteSize() < 20  # header only: no values, no content
        decoded = to_ndarray(message)
        assert decoded.shape == array.shape and decoded.dtype == array.dtype
        assert serving_decode(message).shape == array.shape


@pytest.mark.parametrize("use_tensor_content", [False, True], ids=["fields", "content"])
def test_strided_arrays_are_encoded_in_c_order(use_tensor_content: bool):
    for array in (np.arange(12, dtype=np.float32).reshape(3, 4).T,
                  np.arange(12, dtype=np.float16).reshape(3, 4)[:, ::2],
                  np.arange(24, dtype=np.int32).reshape(4, 6)[::2, 1::2] - 5,
                  np.arange(6, dtype=np.int8).reshape(2, 3).T.astype(ml_dtypes.int4),
                  np.array([[b"a", b"b"], [b"c", b"d"]], dtype=object).T):
        message = from_ndarray(array, use_tensor_content=use_tensor_content)
        assert_same(to_ndarray(message), array)
        assert_same(serving_decode(message), array)


def test_tensor_content_is_decoded_zero_copy_and_read_only():
    images = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    decoded = to_ndarray(from_ndarray(images, use_tensor_content=True))
    assert not decoded.flags.writeable
    owner = decoded
    while isinstance(owner, np.ndarray):
        owner = owner.base
    assert isinstance(owner, bytes)  # a view of the proto's bytes, not a copy
    np.testing.assert_array_equal(decoded, images)


_HYPOTHESIS_DTYPES = st.sampled_from([
    np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64, np.uint8,
    np.uint16, np.uint32, np.uint64, np.bool_, np.complex64, np.complex128,
])
_SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)


@HYPOTHESIS
@given(array=hnp.arrays(_HYPOTHESIS_DTYPES, _SHAPES), use_tensor_content=st.booleans())
def test_random_arrays_round_trip(array: np.ndarray, use_tensor_content: bool):
    message = from_ndarray(array, use_tensor_content=use_tensor_content)
    decoded = to_ndarray(message)
    assert decoded.dtype == array.dtype
    assert_same(decoded, array)


@HYPOTHESIS
@given(bits=hnp.arrays(np.uint16, _SHAPES), use_tensor_content=st.booleans())
def test_random_bfloat16_round_trip(bits: np.ndarray, use_tensor_content: bool):
    array = bits.view(ml_dtypes.bfloat16)
    assert_same(to_ndarray(from_ndarray(array, use_tensor_content=use_tensor_content)), array)


@HYPOTHESIS
@given(strings=st.lists(st.binary(max_size=200) | st.text(max_size=20), max_size=12),
       use_tensor_content=st.booleans())
def test_random_strings_round_trip(strings: list, use_tensor_content: bool):
    array = np.empty(len(strings), dtype=object)
    array[:] = strings
    decoded = to_ndarray(from_ndarray(array, use_tensor_content=use_tensor_content))
    assert decoded.tolist() == [s.encode() if isinstance(s, str) else s for s in strings]


# --- malformed protos ---------------------------------------------------------------------------

_DTYPE_ENUMS = st.sampled_from([*range(0, 36), DT.DT_FLOAT_REF, DT.DT_HALF_REF, 1000])
_INT32 = st.integers(-2**31, 2**31 - 1)


@st.composite
def malformed_protos(draw: st.DrawFn) -> TensorProto:
    dims = draw(st.lists(st.integers(-2, 4), max_size=3))
    message = proto(draw(_DTYPE_ENUMS), dims, unknown_rank=draw(st.booleans()))
    small = {"max_size": 7}
    fields = {
        "float_val": st.lists(st.floats(width=32), **small),
        "double_val": st.lists(st.floats(), **small),
        "int_val": st.lists(_INT32, **small),
        "half_val": st.lists(_INT32, **small),
        "int64_val": st.lists(st.integers(-2**63, 2**63 - 1), **small),
        "uint32_val": st.lists(st.integers(0, 2**32 - 1), **small),
        "uint64_val": st.lists(st.integers(0, 2**64 - 1), **small),
        "bool_val": st.lists(st.booleans(), **small),
        "string_val": st.lists(st.binary(max_size=5), **small),
        "scomplex_val": st.lists(st.floats(width=32), **small),
        "dcomplex_val": st.lists(st.floats(), **small),
    }
    for name in draw(st.sets(st.sampled_from(sorted(fields)), max_size=3)):
        getattr(message, name).extend(draw(fields[name]))
    if draw(st.booleans()):
        message.float8_val = draw(st.binary(max_size=7))
    content = draw(st.sampled_from(["none", "random", "sized"]))
    if content == "random":
        message.tensor_content = draw(st.binary(max_size=40))
    elif content == "sized":  # the right length for the shape, when there is one
        n = int(np.prod([max(d, 0) for d in dims])) if dims else 1
        try:
            itemsize = tf_dtype_to_numpy(message.dtype).itemsize
        except TensorDecodeError:
            itemsize = 4
        message.tensor_content = draw(st.binary(min_size=n * itemsize, max_size=n * itemsize))
    return message


@settings(HYPOTHESIS, max_examples=300)
@given(message=malformed_protos())
def test_random_protos_decode_like_tensorflow(message: TensorProto):
    try:
        ours = to_ndarray(message)
    except TensorDecodeError:
        ours = None
    if message.dtype in (DT.DT_RESOURCE, DT.DT_VARIANT):
        assert ours is None  # numpy cannot hold them; TF's own numpy conversion fails too
        return
    served = serving_decode(message)
    event("refused" if served is None else "accepted")
    assert (ours is None) == (served is None), (ours, served)
    if ours is not None:
        assert ours.dtype == tf_dtype_to_numpy(message.dtype)
        assert_same(ours, served)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes(out) + bytes([value])


_FRAGMENTS = st.lists(st.tuples(
    st.integers(1, 18),  # every TensorProto field number
    st.integers(0, 2**64 - 1) | st.binary(max_size=24),  # varint or length-delimited payload
), max_size=8)


@st.composite
def wire_messages(draw: st.DrawFn) -> bytes:
    """Random fields in the wire format, or a random proto with a flipped byte."""
    if draw(st.booleans()):
        wire = b""
        for number, payload in draw(_FRAGMENTS):
            if isinstance(payload, int):
                wire += _varint(number << 3) + _varint(payload)
            else:
                wire += _varint(number << 3 | 2) + _varint(len(payload)) + payload
        return wire
    wire = bytearray(draw(malformed_protos()).SerializeToString())
    if wire:
        wire[draw(st.integers(0, len(wire) - 1))] = draw(st.integers(0, 255))
    return bytes(wire)


@HYPOTHESIS
@given(wire=wire_messages())
def test_random_wire_bytes_raise_only_tensor_decode_error(wire: bytes):
    try:
        message = TensorProto.FromString(wire)
    except DecodeError:
        assume(False)
    try:
        result = to_ndarray(message, max_bytes=1 << 20)
    except TensorDecodeError as err:
        assert err.reason
        return
    assert isinstance(result, np.ndarray)


HUGE = [
    ("int64_overflow", proto(DT.DT_FLOAT, [2**40, 2**40]), None),
    ("over_cap_splat", proto(DT.DT_FLOAT, [2**31, 2**31], float_val=[1.0]), None),
    ("over_cap_uint8", proto(DT.DT_UINT8, [2**33], int_val=[7]), None),
    ("over_cap_strings", proto(DT.DT_STRING, [2**40], tensor_content=b"\x01x"), None),
    ("strings_without_bytes", proto(DT.DT_STRING, [2**30], tensor_content=b"\x01x"), 2**62),
    ("content_length_first", proto(DT.DT_FLOAT, [2**28], tensor_content=b"\0" * 8), 2**62),
]


@pytest.mark.parametrize(("message", "max_bytes"), [h[1:] for h in HUGE], ids=[h[0] for h in HUGE])
def test_huge_declared_shapes_are_refused_before_allocating(message: TensorProto,
                                                            max_bytes: int | None):
    kwargs = {} if max_bytes is None else {"max_bytes": max_bytes}
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(TensorDecodeError):
            to_ndarray(message, **kwargs)
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < 5.0  # a hang guard (refusal is microseconds), not a speed claim
    assert peak < 1 << 20  # nothing near the declared size was allocated


def test_max_bytes_limit():
    message = proto(DT.DT_FLOAT, [4], float_val=[1.0])
    np.testing.assert_array_equal(to_ndarray(message, max_bytes=16), np.ones(4, np.float32))
    with pytest.raises(TensorDecodeError, match="more than the limit of 15"):
        to_ndarray(message, max_bytes=15)
    for bad in (-1, "16", 1.5):
        with pytest.raises(UsageError, match="max_bytes"):
            to_ndarray(message, max_bytes=bad)
    with pytest.raises(UsageError, match="proto"):
        to_ndarray(b"\x08\x01")


def test_decode_error_carries_reason_and_tf_serving_message():
    with pytest.raises(TensorDecodeError) as caught:
        to_ndarray(proto(DT.DT_FLOAT, [2], tensor_content=b"\0" * 7))
    err = caught.value
    assert isinstance(err, ValueError)
    assert err.reason == str(err) == "tensor_content has 7 bytes; 2 DT_FLOAT elements take 8"
    assert err.status_message("images") == "tensor parsing error: images"
    assert TENSOR_PARSING_ERROR.format(alias="x") == "tensor parsing error: x"
    with pytest.raises(TensorDecodeError, match=r"dim\[1\].size is -3"):
        to_ndarray(proto(DT.DT_FLOAT, [2, -3]))
    # MultiplyWithoutOverflow: 2**63 elements overflow int64, even before a zero dimension.
    for dims in ([2**32, 2**31], [2**62, 2, 0]):
        with pytest.raises(TensorDecodeError, match=r"more than 2\*\*63-1 elements"):
            to_ndarray(proto(DT.DT_FLOAT, dims), max_bytes=2**80)
    with pytest.raises(TensorDecodeError, match="more than the limit"):
        to_ndarray(proto(DT.DT_UINT8, [2**31, 2**32 - 1]))


def test_shapes_numpy_cannot_hold_are_refused():
    """TF accepts these (an empty tensor with a huge dimension, more than 64 dimensions)."""
    for message in (proto(DT.DT_FLOAT, [2**62, 0, 4]), proto(DT.DT_FLOAT, [1] * 65)):
        with pytest.raises(TensorDecodeError, match="numpy"):
            to_ndarray(message)
    assert to_ndarray(proto(DT.DT_FLOAT, [1] * 64, float_val=[2])).shape == (1,) * 64


# --- dtypes and from_ndarray arguments ----------------------------------------------------------

def test_dtype_maps_agree_with_tensorflow():
    for enum in SAMPLES:
        expected = np.dtype(tf.dtypes.as_dtype(enum).as_numpy_dtype)
        assert tf_dtype_to_numpy(enum) == expected
        assert numpy_to_tf_dtype(expected) == enum
    for like, enum in ((np.bytes_, DT.DT_STRING), (np.str_, DT.DT_STRING), (">f4", DT.DT_FLOAT),
                       (np.dtype("<i8"), DT.DT_INT64), (bool, DT.DT_BOOL)):
        assert numpy_to_tf_dtype(like) == enum
    for enum in (DT.DT_INVALID, DT.DT_RESOURCE, DT.DT_VARIANT, DT.DT_FLOAT_REF, 999):
        with pytest.raises(TensorDecodeError):
            tf_dtype_to_numpy(enum)
    for bad in ("datetime64[s]", "not-a-dtype", [("a", "i4"), ("b", "f4")]):
        with pytest.raises(UsageError, match="dtype"):
            numpy_to_tf_dtype(bad)


def test_from_ndarray_dtype_argument_and_inputs():
    for dtype in (DT.DT_FLOAT, tf.float32, np.float32, "float32"):
        message = from_ndarray([[1, 2], [3, 4]], dtype=dtype)
        assert message.dtype == DT.DT_FLOAT and list(message.float_val) == [1, 2, 3, 4]
    assert from_ndarray([1.5, 2.5]).dtype == DT.DT_DOUBLE  # no float64 -> float32 narrowing
    assert to_ndarray(from_ndarray(np.array([1.0, 2.0], ">f4"))).tolist() == [1.0, 2.0]
    assert list(from_ndarray("héllo").string_val) == ["héllo".encode()]
    assert to_ndarray(from_ndarray([b"a", "b"])).tolist() == [b"a", b"b"]
    assert to_ndarray(from_ndarray([1, 2], dtype=DT.DT_QINT8)).tolist() == [(1,), (2,)]
    with pytest.raises(UsageError, match="numbers for DT_FLOAT"):
        from_ndarray(["a"], dtype=np.float32)
    with pytest.raises(UsageError, match="bytes or str for DT_STRING"):
        from_ndarray([1, 2], dtype=DT.DT_STRING)
    with pytest.raises(UsageError, match="bytes or str"):
        from_ndarray(np.array([b"a", 3], dtype=object))
    with pytest.raises(UsageError, match="DT_RESOURCE"):
        from_ndarray([1], dtype=DT.DT_RESOURCE)
    with pytest.raises(UsageError, match="dtype"):
        from_ndarray(np.array(["2020-01-01"], dtype="datetime64[D]"))


def test_typed_varints_use_canonical_values_for_every_width():
    """Every varint width (1..10 bytes) reads back as the value, in our decoder and in TF's."""
    values = np.array([0] + [2 ** (7 * k) - 1 for k in range(1, 10)] + [2**64 - 1], np.uint64)
    message = from_ndarray(values)
    assert list(message.uint64_val) == values.tolist()
    negatives = np.array([-1, -128, -2**31], np.int32)
    assert list(from_ndarray(negatives).int_val) == negatives.tolist()
    assert_same(serving_decode(from_ndarray(negatives)), negatives)


@pytest.mark.benchmark
def test_benchmark_runs_and_codec_beats_make_ndarray(capsys: pytest.CaptureFixture[str]):
    from benchmarks import codec_bench

    assert codec_bench.main(["--repeat", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if "int_val" in line and "decode" in line)
    ratio = float(row.split()[6].rstrip("x"))
    assert ratio > 5  # np.asarray on the repeated field vs np.fromiter: two orders of magnitude
