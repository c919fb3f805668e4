"""Serving signatures, one home for their types: what GetModelMetadata says a model takes and gives.

TF Serving describes a model by its SignatureDefs (`tensorflow/core/protobuf/meta_graph.proto`):
per signature a method name and, per input and output alias, a DataType and a shape in which -1
is a dimension of unknown size. The gRPC client, the REST client, the embedded server and the
attacks all read them into the same types:

- `TensorInfo`: one alias, with its numpy dtype, its shape (None for an unknown dimension, None
  for an unknown rank) and its DataType enum;
- `Signature`: a whole SignatureDef (`Signature.from_proto`), for any kind of model;
- `select_signature`: the named signature of a `SignatureDefMap`, or an error listing the others;
- `SignatureInfo` and `image_classifier`: the image-classifier view (which input takes images,
  which output holds the class probabilities) that the attacks query through.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping

import numpy as np
from tensorflow.core.protobuf import meta_graph_pb2

from common.errors import UsageError, invalid
from serving import codec

__all__ = [
    "DEFAULT_SIGNATURE",
    "INIT_OP_SIGNATURE",
    "Signature",
    "SignatureInfo",
    "TensorInfo",
    "describe_tensors",
    "image_classifier",
    "select_signature",
]

DEFAULT_SIGNATURE = "serving_default"
INIT_OP_SIGNATURE = "__saved_model_init_op"
"""The SavedModel's initializer: listed among the SignatureDefs, never callable."""
PROBABILITIES = "probabilities"


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One input or output of a signature: its key, numpy dtype and shape.

    `shape` is a tuple with None for a dimension of unknown size (-1 on the wire), or None when
    the rank itself is unknown. `tf_dtype` is the DataType enum when read from a SignatureDef
    (`dtype` is then `object` for DT_RESOURCE, DT_VARIANT and others numpy cannot hold).
    """

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...] | None
    tf_dtype: int | None = dataclasses.field(default=None, compare=False)

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @classmethod
    def from_proto(cls, name: str, info: meta_graph_pb2.TensorInfo) -> TensorInfo:
        shape = None
        if not info.tensor_shape.unknown_rank:
            shape = tuple(None if d.size < 0 else int(d.size) for d in info.tensor_shape.dim)
        try:
            dtype = codec.tf_dtype_to_numpy(info.dtype)
        except codec.TensorDecodeError:  # DT_RESOURCE, DT_VARIANT...: no numpy dtype holds them
            dtype = np.dtype(object)
        return cls(name, dtype, shape, int(info.dtype))


@dataclasses.dataclass(frozen=True)
class Signature:
    """A serving signature as GetModelMetadata describes it, for any kind of model."""

    name: str
    method_name: str
    inputs: Mapping[str, TensorInfo]
    outputs: Mapping[str, TensorInfo]
    defaults: frozenset[str] = frozenset()
    """Inputs that have a default value in the SavedModel and may be left out of a request."""

    @classmethod
    def from_proto(cls, name: str, definition: meta_graph_pb2.SignatureDef) -> Signature:
        """The signature `name` of a SignatureDef proto (aliases in sorted order)."""
        return cls(
            name=name,
            method_name=definition.method_name,
            inputs=types.MappingProxyType(
                {k: TensorInfo.from_proto(k, v) for k, v in sorted(definition.inputs.items())}),
            outputs=types.MappingProxyType(
                {k: TensorInfo.from_proto(k, v) for k, v in sorted(definition.outputs.items())}),
            defaults=frozenset(definition.defaults),
        )


def select_signature(signature_map, name: str, *, where: str) -> Signature:
    """Signature `name` of a `SignatureDefMap`; `UsageError` naming `signature` and listing the
    callable ones (the init op left out) when there is none of that name. `where` says whose
    signatures they are ("model 'm' at host:port")."""
    if name not in signature_map.signature_def:
        available = sorted(k for k in signature_map.signature_def if k != INIT_OP_SIGNATURE)
        raise invalid("signature", name, f"one of the signatures of {where}: {available}")
    return Signature.from_proto(name, signature_map.signature_def[name])


@dataclasses.dataclass(frozen=True)
class SignatureInfo:
    """The image-classifier view of a signature: which input takes images, which output answers.

    `image_size` is (H, W) when both are fixed by the signature, else None (any size is sent
    as given); `channels` is None when the signature leaves it open.
    """

    name: str
    method_name: str
    input_name: str
    input_dtype: np.dtype
    input_shape: tuple[int | None, ...]
    output_names: tuple[str, ...]
    output_dtypes: tuple[np.dtype, ...]
    output_shapes: tuple[tuple[int | None, ...] | None, ...]
    probabilities: str
    """The output holding class probabilities (`probabilities`, or the single rank-2 output)."""
    image_size: tuple[int, int] | None
    channels: int | None
    classes: int | None = None
    """The number of classes when the answer output alone does not tell it (class ids, top-k
    pairs); None: the width of the `probabilities` output."""

    @property
    def num_classes(self) -> int | None:
        if self.classes is not None:
            return self.classes
        shape = self.output_shapes[self.output_names.index(self.probabilities)]
        if shape is None or len(shape) < 2:  # class ids [batch]: the width is not in the shape
            return None
        return shape[-1]

    def output(self, name: str) -> TensorInfo:
        index = self.output_names.index(name)
        return TensorInfo(name, self.output_dtypes[index], self.output_shapes[index])


def describe_tensors(tensors: Mapping[str, TensorInfo]) -> str:
    """`{name: dtype[shape], ...}` with -1 for an unknown dimension, `?` for an unknown rank."""
    def fmt(t: TensorInfo) -> str:
        shape = "?" if t.shape is None else "[" + ",".join("-1" if d is None else str(d)
                                                           for d in t.shape) + "]"
        return f"{t.name}: {t.dtype.name}{shape}"

    return "{" + ", ".join(fmt(t) for t in tensors.values()) + "}"


def image_classifier(sig: Signature, *, output: str | None = None,
                     where: str = "the model") -> SignatureInfo:
    """The image-classifier view of `sig`: its one rank-4 input, and as the answer `output`,
    else the output named `probabilities`, else its one rank-2 output.

    Raises `UsageError` naming `signature` when it is not an image classifier (no single rank-4
    input, other required inputs, no probabilities output) and naming `output` when that output
    is ambiguous or the one given does not exist. `where` names the model in the messages.
    """
    def not_classifier(why: str) -> UsageError:
        return invalid(
            "signature", sig.name,
            f"an image classifier signature (one image input of rank 4 [batch, H, W, C] and "
            f"a class-probabilities output of rank 2) but {why}; {where} has inputs "
            f"{describe_tensors(sig.inputs)} and outputs {describe_tensors(sig.outputs)} "
            f"(use predict_raw for other signatures)",
        )

    images = [t for t in sig.inputs.values() if t.rank == 4]
    if len(images) != 1:
        raise not_classifier(f"{len(images)} inputs have rank 4")
    image = images[0]
    missing = sorted(k for k in sig.inputs if k != image.name and k not in sig.defaults)
    if missing:
        raise not_classifier(f"it also requires the inputs {missing}")
    if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise not_classifier(f"the image input has dtype {image.dtype.name}")
    if not sig.outputs:
        raise not_classifier("it has no outputs")

    if output is not None:
        if output not in sig.outputs:
            raise invalid("output", output, f"one of the outputs {sorted(sig.outputs)}")
        probabilities = output
    elif PROBABILITIES in sig.outputs:
        probabilities = PROBABILITIES
    else:
        rank2 = [k for k, t in sig.outputs.items() if t.rank == 2]
        if not rank2:
            raise not_classifier("no output has rank 2 [batch, classes]")
        if len(rank2) > 1:
            raise invalid(
                "output", None,
                f"the name of the probabilities output: {where} has several rank-2 outputs "
                f"{sorted(rank2)} and none named '{PROBABILITIES}'",
            )
        probabilities = rank2[0]
    rank = sig.outputs[probabilities].rank
    named_ids = (rank == 1 and output is not None
                 and np.issubdtype(sig.outputs[probabilities].dtype, np.integer))
    if rank not in (None, 2) and not named_ids:  # class ids [batch] only when named
        raise not_classifier(f"the output '{probabilities}' has rank {rank}")

    _, height, width, channels = image.shape
    return SignatureInfo(
        name=sig.name,
        method_name=sig.method_name,
        input_name=image.name,
        input_dtype=image.dtype,
        input_shape=image.shape,
        output_names=tuple(sig.outputs),
        output_dtypes=tuple(t.dtype for t in sig.outputs.values()),
        output_shapes=tuple(t.shape for t in sig.outputs.values()),
        probabilities=probabilities,
        image_size=None if height is None or width is None else (height, width),
        channels=channels,
    )
