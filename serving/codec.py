"""TensorProto <-> numpy codec that decodes exactly as TensorFlow Serving does.

TF Serving turns every request input into a `tensorflow::Tensor` with `Tensor::FromProto`
(tensorflow/core/framework/tensor.cc) and answers INVALID_ARGUMENT "tensor parsing error: <alias>"
when that returns false. `to_ndarray` follows the same rules: the shape must be valid
(`TensorShape::IsValid`: at most 254 dimensions, none negative, element count within int64,
`unknown_rank` ignored); non-empty `tensor_content` must hold exactly `n * itemsize` little-endian
bytes (strings: TF's varint-prefixed string list, bools: only bytes 0 and 1); otherwise the typed
field of the dtype is read (`FromProtoField`): no values -> zeros, fewer values than elements ->
the rest repeat the last value (splat), more -> the first `n` are used, values in the field of
another dtype are ignored, integers wrap as C++ casts do; empty tensors only need a valid dtype.
`tf.make_ndarray` is stricter than the server (it refuses oversized fields, out-of-range
`int_val`/`half_val`, string `tensor_content`, leftover bytes behind empty tensors) and looser (it
accepts bool bytes other than 0/1); this module does what the server does. It refuses, where TF
would not, only what numpy cannot hold (DT_RESOURCE, DT_VARIANT, more than 64 dimensions) and
tensors above `max_bytes`, before allocating them. Encoding writes what TF Serving's Predict
sends back (`Tensor::AsProtoField`: typed repeated fields), or `tensor_content` on request
(`AsProtoTensorContent`); it builds the protobuf wire format with numpy, several times faster than
filling repeated fields from Python lists. Decoding reads repeated fields through upb's native
`__array__` and `tensor_content` with `np.frombuffer`. The codec assumes a little-endian host, as
every TF Serving build does.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_dtypes
import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from common.constraints import check_int
from common.errors import invalid

__all__ = [
    "DEFAULT_MAX_BYTES",
    "TENSOR_PARSING_ERROR",
    "TensorDecodeError",
    "from_ndarray",
    "numpy_to_tf_dtype",
    "tf_dtype_to_numpy",
    "to_ndarray",
]

# The exact INVALID_ARGUMENT message of TF Serving when `Tensor::FromProto` fails: built by
# `GetInputValues` in tensorflow/cc/saved_model/util.cc, which PreProcessPrediction in
# tensorflow_serving/servables/tensorflow/predict_util.cc calls (older releases had the same
# `"tensor parsing error: " + alias` inline in predict_util.cc). The real server adds no reason.
TENSOR_PARSING_ERROR = "tensor parsing error: {alias}"

DEFAULT_MAX_BYTES = 2**31 - 1  # gRPC's hard 2 GiB message limit
_MAX_TF_RANK = 254  # TensorShapeRep::MaxDimensions(), tensorflow/core/framework/tensor_shape.h
_MAX_NUMPY_RANK = 64  # NPY_MAXDIMS in numpy 2
_INT64_MAX = 2**63 - 1

TensorProto = tensor_pb2.TensorProto
DT = types_pb2.DataType


class TensorDecodeError(ValueError):
    """A TensorProto that `Tensor::FromProto` refuses (or that numpy cannot hold).

    `str(err)` and `err.reason` say why, for logs and for this toolkit's own servers; a server that
    must be indistinguishable from TF Serving answers INVALID_ARGUMENT with
    `err.status_message(alias)`, which is TF Serving's exact text and carries no reason.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def status_message(self, alias: str) -> str:
        """TF Serving's message for this failure on the input named `alias`."""
        return TENSOR_PARSING_ERROR.format(alias=alias)


# --- dtype table --------------------------------------------------------------------------------

_TYPED, _COMPLEX, _BYTES, _STRING = "typed", "complex", "bytes", "string"


@dataclasses.dataclass(frozen=True)
class _Spec:
    """How one DataType lives in numpy and in a TensorProto."""

    enum: int
    dtype: np.dtype  # what to_ndarray returns
    field: str  # the TensorProto field FromProtoField reads and AsProtoField writes
    kind: str
    # The plain numpy type the field's values are cast to (C++ static_cast, wrapping) before being
    # reinterpreted as `dtype`: int_val -> uint8, half_val -> uint16 bits of a float16, ...
    storage: np.dtype


def _spec(enum: int, dtype: Any, field: str, kind: str = _TYPED, storage: Any = None) -> _Spec:
    dt = np.dtype(dtype)
    return _Spec(enum, dt, field, kind, np.dtype(storage) if storage is not None else dt)


def _quantized(name: str, base: str) -> np.dtype:
    # The same structured dtypes as `tf.qint8.as_numpy_dtype` and friends.
    return np.dtype([(name, base)])


_SPECS: dict[int, _Spec] = {
    s.enum: s
    for s in (
        _spec(DT.DT_FLOAT, np.float32, "float_val"),
        _spec(DT.DT_DOUBLE, np.float64, "double_val"),
        _spec(DT.DT_INT32, np.int32, "int_val"),
        _spec(DT.DT_UINT8, np.uint8, "int_val"),
        _spec(DT.DT_INT16, np.int16, "int_val"),
        _spec(DT.DT_INT8, np.int8, "int_val"),
        _spec(DT.DT_UINT16, np.uint16, "int_val"),
        _spec(DT.DT_INT64, np.int64, "int64_val"),
        _spec(DT.DT_UINT32, np.uint32, "uint32_val"),
        _spec(DT.DT_UINT64, np.uint64, "uint64_val"),
        _spec(DT.DT_BOOL, np.bool_, "bool_val"),
        _spec(DT.DT_STRING, object, "string_val", _STRING),
        _spec(DT.DT_COMPLEX64, np.complex64, "scomplex_val", _COMPLEX),
        _spec(DT.DT_COMPLEX128, np.complex128, "dcomplex_val", _COMPLEX),
        _spec(DT.DT_HALF, np.float16, "half_val", storage=np.uint16),
        _spec(DT.DT_BFLOAT16, ml_dtypes.bfloat16, "half_val", storage=np.uint16),
        _spec(DT.DT_QINT8, _quantized("qint8", "i1"), "int_val", storage=np.int8),
        _spec(DT.DT_QUINT8, _quantized("quint8", "u1"), "int_val", storage=np.uint8),
        _spec(DT.DT_QINT16, _quantized("qint16", "<i2"), "int_val", storage=np.int16),
        _spec(DT.DT_QUINT16, _quantized("quint16", "<u2"), "int_val", storage=np.uint16),
        _spec(DT.DT_QINT32, _quantized("qint32", "<i4"), "int_val", storage=np.int32),
        # Sub-byte integers take one byte per element; TF copies int_val into int8 storage.
        _spec(DT.DT_INT4, ml_dtypes.int4, "int_val", storage=np.int8),
        _spec(DT.DT_UINT4, ml_dtypes.uint4, "int_val", storage=np.int8),
        _spec(DT.DT_INT2, ml_dtypes.int2, "int_val", storage=np.int8),
        _spec(DT.DT_UINT2, ml_dtypes.uint2, "int_val", storage=np.int8),
        # 8- and 4-bit floats: one byte per element in the `bytes float8_val` field.
        _spec(DT.DT_FLOAT8_E5M2, ml_dtypes.float8_e5m2, "float8_val", _BYTES, np.uint8),
        _spec(DT.DT_FLOAT8_E4M3FN, ml_dtypes.float8_e4m3fn, "float8_val", _BYTES, np.uint8),
        _spec(DT.DT_FLOAT8_E4M3FNUZ, ml_dtypes.float8_e4m3fnuz, "float8_val", _BYTES, np.uint8),
        _spec(
            DT.DT_FLOAT8_E4M3B11FNUZ, ml_dtypes.float8_e4m3b11fnuz, "float8_val", _BYTES, np.uint8
        ),
        _spec(DT.DT_FLOAT8_E5M2FNUZ, ml_dtypes.float8_e5m2fnuz, "float8_val", _BYTES, np.uint8),
        _spec(DT.DT_FLOAT4_E2M1FN, ml_dtypes.float4_e2m1fn, "float8_val", _BYTES, np.uint8),
    )
}
# Tensor::FromProto knows these too, but numpy cannot hold resource handles or variants.
_UNSUPPORTED = {DT.DT_RESOURCE: "DT_RESOURCE", DT.DT_VARIANT: "DT_VARIANT"}
_NUMPY_TO_ENUM: dict[np.dtype, int] = {
    s.dtype: s.enum for s in _SPECS.values() if s.kind != _STRING
}

# The numpy dtype in which each repeated field hands out its values (upb's __array__).
_FIELD_DTYPES = {
    "float_val": np.dtype(np.float32),
    "double_val": np.dtype(np.float64),
    "int_val": np.dtype(np.int32),
    "half_val": np.dtype(np.int32),
    "int64_val": np.dtype(np.int64),
    "uint32_val": np.dtype(np.uint32),
    "uint64_val": np.dtype(np.uint64),
    "bool_val": np.dtype(np.bool_),
    "scomplex_val": np.dtype(np.float32),
    "dcomplex_val": np.dtype(np.float64),
}


def _dtype_name(enum: int) -> str:
    try:
        return DT.Name(enum)
    except ValueError:
        return str(enum)


def tf_dtype_to_numpy(enum: int) -> np.dtype:
    """The numpy dtype that holds a tensor of DataType `enum` (DT_STRING -> object).

    Raises `TensorDecodeError` for DT_INVALID, unknown numbers, reference types and the
    DT_RESOURCE/DT_VARIANT types numpy cannot hold.
    """
    spec = _SPECS.get(enum)
    if spec is None:
        raise TensorDecodeError(_dtype_reason(enum))
    return spec.dtype


def _dtype_reason(enum: int) -> str:
    if enum == DT.DT_INVALID:
        return "dtype is DT_INVALID (not set)"
    if enum in _UNSUPPORTED:
        return f"dtype {_UNSUPPORTED[enum]} cannot be held by a numpy array"
    return f"dtype {_dtype_name(enum)} is not a DataType a tensor can hold"


def numpy_to_tf_dtype(dtype: Any) -> int:
    """The DataType enum for a numpy dtype (or anything `np.dtype` accepts).

    Bytes, str and object dtypes map to DT_STRING, `ml_dtypes` types to their TF counterparts,
    the structured `tf.qint8.as_numpy_dtype`-style dtypes to the quantized types.
    """
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise invalid("dtype", dtype, "a numpy dtype or a type np.dtype() accepts") from None
    if dt.kind in "OSU":
        return DT.DT_STRING
    if dt.byteorder not in "=|":
        dt = dt.newbyteorder("=")
    enum = _NUMPY_TO_ENUM.get(dt)
    if enum is None:
        raise invalid("dtype", dt, "a dtype with a TensorFlow DataType (numbers, bool, strings)")
    return enum


# --- decoding -----------------------------------------------------------------------------------


def _validated_shape(shape: tensor_shape_pb2.TensorShapeProto) -> tuple[tuple[int, ...], int]:
    """`TensorShape::IsValid` for a full (not partial) shape, then numpy's own limits."""
    dims = shape.dim
    if len(dims) > _MAX_TF_RANK:
        raise TensorDecodeError(
            f"tensor_shape has {len(dims)} dimensions; at most {_MAX_TF_RANK} are allowed"
        )
    sizes = tuple([d.size for d in dims])  # a list comprehension is the fastest here
    n = 1
    for i, size in enumerate(sizes):
        if size < 0:
            raise TensorDecodeError(
                f"tensor_shape.dim[{i}].size is {size}; a tensor's dimensions must be >= 0"
            )
        n *= size
        if n > _INT64_MAX:  # checked per step, as MultiplyWithoutOverflow does
            raise TensorDecodeError(f"tensor_shape {list(sizes)} has more than 2**63-1 elements")
    if len(sizes) > _MAX_NUMPY_RANK:
        raise TensorDecodeError(
            f"tensor_shape has {len(sizes)} dimensions; numpy arrays hold at most {_MAX_NUMPY_RANK}"
        )
    return sizes, n


def to_ndarray(proto: TensorProto, *, max_bytes: int = DEFAULT_MAX_BYTES) -> np.ndarray:
    """Decode `proto` as TF Serving's `Tensor::FromProto` does.

    Returns an array of the proto's dtype and shape; from `tensor_content` it is a read-only,
    zero-copy view of the bytes. Raises `TensorDecodeError` where TF Serving answers "tensor
    parsing error", and also, before allocating anything, when the tensor would take more than
    `max_bytes` bytes (TF Serving fails its allocation instead).
    """
    if not isinstance(proto, TensorProto):
        raise invalid("proto", type(proto).__name__, "a tensorflow.TensorProto")
    check_int("max_bytes", max_bytes, min=0)
    sizes, n = _validated_shape(proto.tensor_shape)
    spec = _SPECS.get(proto.dtype)
    if spec is None:
        raise TensorDecodeError(_dtype_reason(proto.dtype))
    nbytes = n * spec.dtype.itemsize
    if nbytes > max_bytes:
        raise TensorDecodeError(
            f"a {_dtype_name(spec.enum)} tensor of shape {list(sizes)} takes {nbytes} bytes, "
            f"more than the limit of {max_bytes}"
        )
    if n == 0:  # FromProto reads no values, whatever the proto holds
        try:
            return np.empty(sizes, spec.dtype)
        except ValueError:
            raise TensorDecodeError(f"numpy cannot make an array of shape {list(sizes)}") from None
    content = proto.tensor_content
    flat = _from_content(spec, content, n) if content else _from_field(spec, proto, n)
    return flat.reshape(sizes)


def _from_content(spec: _Spec, content: bytes, n: int) -> np.ndarray:
    if spec.kind == _STRING:
        return _decode_string_list(content, n)
    expected = n * spec.dtype.itemsize
    if len(content) != expected:
        raise TensorDecodeError(
            f"tensor_content has {len(content)} bytes; {n} {_dtype_name(spec.enum)} elements "
            f"take {expected}"
        )
    flat = np.frombuffer(content, dtype=spec.dtype)
    if spec.enum == DT.DT_BOOL and flat.view(np.uint8).max() > 1:
        raise TensorDecodeError("DT_BOOL tensor_content holds a byte other than 0 and 1")
    return flat


def _decode_string_list(content: bytes, n: int) -> np.ndarray:
    """`port::DecodeStringList`: n varint32 lengths, then the strings back to back."""
    end = len(content)
    if n > end:  # every length takes at least one byte
        raise TensorDecodeError(f"DT_STRING tensor_content of {end} bytes cannot hold {n} strings")
    sizes = []
    pos = 0
    for _ in range(n):
        value = shift = 0
        while True:
            if shift > 28 or pos >= end:
                raise TensorDecodeError("DT_STRING tensor_content has a malformed length varint")
            byte = content[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                break
            shift += 7
        sizes.append(value & 0xFFFFFFFF)
    if sum(sizes) != end - pos:
        raise TensorDecodeError(
            f"DT_STRING tensor_content lengths add up to {sum(sizes)} bytes but "
            f"{end - pos} follow them"
        )
    out = np.empty(n, dtype=object)
    for i, size in enumerate(sizes):
        out[i] = content[pos : pos + size]
        pos += size
    return out


def _from_field(spec: _Spec, proto: TensorProto, n: int) -> np.ndarray:
    """`FromProtoField`: the first n values, the last one repeated (splat), or zeros."""
    values = getattr(proto, spec.field)
    if spec.kind == _STRING:
        if len(values) == 0:
            return np.full(n, b"", dtype=object)
        head = values[:n]
        strings = np.empty(n, dtype=object)
        strings[: len(head)] = head
        strings[len(head) :] = head[-1]
        return strings
    if spec.kind == _BYTES:
        stored = np.frombuffer(values, dtype=np.uint8)
    elif len(values) == 0:
        return np.zeros(n, dtype=spec.dtype)
    else:
        stored = np.asarray(values, dtype=_FIELD_DTYPES[spec.field])
        if spec.kind == _COMPLEX:  # (real, imag) pairs; an odd last number is ignored
            stored = stored[: len(stored) // 2 * 2].view(spec.dtype)
    k = len(stored)
    if k == 0:
        return np.zeros(n, dtype=spec.dtype)
    if k >= n:
        flat = stored[:n].astype(spec.storage, copy=False)  # static_cast: integers wrap
    else:
        flat = np.empty(n, dtype=spec.storage)
        flat[:k] = stored
        flat[k:] = flat[k - 1]
    return flat if flat.dtype == spec.dtype else flat.view(spec.dtype)


# --- encoding -----------------------------------------------------------------------------------

_VARINT, _LEN = 0, 2  # wire types


def _tag(message: Any, field: str, wire_type: int) -> bytes:
    return _varint((message.DESCRIPTOR.fields_by_name[field].number << 3) | wire_type)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_DTYPE_TAG = _tag(TensorProto, "dtype", _VARINT)
_SHAPE_TAG = _tag(TensorProto, "tensor_shape", _LEN)
_DIM_TAG = _tag(tensor_shape_pb2.TensorShapeProto, "dim", _LEN)
_SIZE_TAG = _tag(tensor_shape_pb2.TensorShapeProto.Dim, "size", _VARINT)
_CONTENT_TAG = _tag(TensorProto, "tensor_content", _LEN)
_FIELD_TAGS = {name: _tag(TensorProto, name, _LEN) for name in (*_FIELD_DTYPES, "float8_val")}
_FIXED_WIDTH_FIELDS = {"float_val", "double_val", "scomplex_val", "dcomplex_val", "float8_val"}
_SUB_BYTE_INTS = {
    np.dtype(t) for t in (ml_dtypes.int4, ml_dtypes.uint4, ml_dtypes.int2, ml_dtypes.uint2)
}


def _header(enum: int, shape: tuple[int, ...]) -> bytes:
    dims = [_SIZE_TAG + _varint(size) for size in shape]
    shape_bytes = b"".join(_DIM_TAG + _varint(len(d)) + d for d in dims)
    return _DTYPE_TAG + _varint(enum) + _SHAPE_TAG + _varint(len(shape_bytes)) + shape_bytes


def _packed_varints(values: np.ndarray) -> bytes:
    """Packed varint payload of integer (or bool) `values`, built with numpy.

    Every value takes the same number of bytes w (enough for the largest): a varint may carry
    redundant zero groups, which every protobuf parser accepts and which vanish when the parsed
    message is serialized again. Negative values are sign-extended to 64 bits (10 bytes), as
    protobuf encodes int32 and int64.
    """
    v = values.reshape(-1)
    if v.dtype.kind == "b":
        v = v.view(np.uint8)
    elif v.dtype.kind == "i":
        if v.min() < 0:
            v = v.astype(np.int64).view(np.uint64)
        else:
            v = v.view(v.dtype.str.replace("i", "u"))
    width = max(1, (int(v.max()).bit_length() + 6) // 7)
    if width == 1:
        return v.astype(np.uint8).tobytes()
    groups = np.empty((v.size, width), dtype=np.uint8)
    for k in range(width):
        groups[:, k] = v >> (7 * k)  # the cast keeps the low 8 bits
    groups[:, : width - 1] |= 0x80
    return groups.tobytes()


def _resolve_dtype(dtype: Any) -> _Spec:
    if isinstance(dtype, int) and not isinstance(dtype, bool):
        enum = dtype
    elif hasattr(dtype, "as_datatype_enum"):  # a tf.DType
        enum = dtype.as_datatype_enum
    else:
        enum = numpy_to_tf_dtype(dtype)
    spec = _SPECS.get(enum)
    if spec is None:
        raise invalid("dtype", dtype, "a DataType this codec supports: " + _dtype_reason(enum))
    return spec


def _string_items(arr: np.ndarray) -> list[bytes]:
    items = []
    for item in arr.reshape(-1).tolist():
        if isinstance(item, str):
            item = item.encode("utf-8")
        elif not isinstance(item, bytes):
            raise invalid("array", f"an element of type {type(item).__name__}", "bytes or str")
        items.append(item)
    return items


def from_ndarray(array: Any, *, dtype: Any = None, use_tensor_content: bool = False) -> TensorProto:
    """Encode `array` as a TensorProto.

    By default the values go into the dtype's typed repeated field (float_val, int_val,
    half_val, string_val, ...), exactly as TF Serving's Predict writes its outputs
    (`Tensor::AsProtoField`); `use_tensor_content=True` writes raw little-endian bytes instead
    (`AsProtoTensorContent`, TF's varint-prefixed list for strings), the fastest for large inputs.
    `dtype` (a numpy dtype, a DataType enum or a tf.DType) casts the array like `ndarray.astype`;
    without it the array's own dtype is kept (no float64 -> float32 narrowing as in
    `tf.make_tensor_proto`). str elements are encoded as UTF-8.
    """
    arr = np.asarray(array)
    spec = _resolve_dtype(arr.dtype if dtype is None else dtype)
    header = _header(spec.enum, arr.shape)
    if spec.kind == _STRING:
        if arr.dtype.kind not in "OSU":
            raise invalid("array", f"an array of {arr.dtype}", "bytes or str for DT_STRING")
        items = _string_items(arr)
        if use_tensor_content and items:
            lengths = b"".join(_varint(len(item)) for item in items)
            data = lengths + b"".join(items)
            return TensorProto.FromString(header + _CONTENT_TAG + _varint(len(data)) + data)
        proto = TensorProto.FromString(header)
        proto.string_val.extend(items)
        return proto
    if arr.dtype.kind in "OSU":
        raise invalid("array", f"an array of {arr.dtype}", f"numbers for {_dtype_name(spec.enum)}")
    if arr.size == 0:
        return TensorProto.FromString(header)
    arr = arr.astype(spec.dtype, copy=False)
    if use_tensor_content:
        data = arr.tobytes()
        return TensorProto.FromString(header + _CONTENT_TAG + _varint(len(data)) + data)
    if spec.field in _FIXED_WIDTH_FIELDS:
        data = arr.tobytes()  # floats, doubles, complex as (real, imag), one byte per float8
    elif spec.dtype in _SUB_BYTE_INTS:
        data = _packed_varints(arr.astype(np.int8))  # static_cast<int>(value)
    else:
        data = _packed_varints(arr.view(spec.storage))  # half & bfloat16: their bits
    return TensorProto.FromString(header + _FIELD_TAGS[spec.field] + _varint(len(data)) + data)
