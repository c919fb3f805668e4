"""A Predict answer's class scores, as the gateway reads and rewrites them.

Which outputs hold class scores comes from the model's signature (GetModelMetadata,
`serving.signature`): every float ``[batch, K]`` output (`class_outputs`). Output policies
rewrite all of them (`degrade_predict_response`): probabilities directly, logits through softmax
and back to log space, so that no output carries more than the degraded answer. The detectors
read one (`watched_probabilities`): the policy's ``output``, else the one named
``probabilities``, else the only one, else the first whose rows are distributions. Whether
rows are probabilities or logits is decided from the rows (non-negative, summing to 1), never
from the output's name. Class ids beside the scores (an int ``[batch]`` output equal to their
argmax) follow the rewritten scores, so a label never tells more than the degraded answer. Top-k
pairs (float ``[batch, k]`` scores with int ``[batch, k]`` class ids) are not class scores: the
signature's pairs are listed (`ClassOutputs.topk`) so that the gateway can say it cannot
rewrite them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import predict_pb2

from common.errors import invalid
from serving import codec
from serving.signature import PROBABILITIES, Signature, describe_tensors

__all__ = ["ClassOutputs", "answer_outputs", "as_probabilities", "class_outputs",
           "degrade_predict_response", "watched_probabilities"]

FLOAT_TYPES = (types_pb2.DT_FLOAT, types_pb2.DT_HALF, types_pb2.DT_DOUBLE, types_pb2.DT_BFLOAT16)
INT_TYPES = (types_pb2.DT_INT64, types_pb2.DT_INT32, types_pb2.DT_INT16, types_pb2.DT_INT8,
             types_pb2.DT_UINT8, types_pb2.DT_UINT16, types_pb2.DT_UINT32, types_pb2.DT_UINT64)


@dataclass(frozen=True)
class ClassOutputs:
    """A signature's class-score outputs: every float ``[batch, K]`` output (`rewritten` by the
    output policies: probabilities and logits alike, so neither carries more than the degraded
    answer) and the one the detectors read (`watched`: the policy's ``output``, else the output
    named ``probabilities``, else the only one; None: decided from the answer's rows)."""

    rewritten: tuple[str, ...]
    watched: str | None = None
    topk: tuple[tuple[str, str], ...] = ()
    """(scores, class ids) of the signature's top-k pairs: not rewritten, not watched."""
    float_input: bool = False
    """Whether the signature's image input (rank 4) is float: pixels in a range to declare."""


def class_outputs(signature: Signature, named: str | None = None) -> ClassOutputs:
    """The `ClassOutputs` of `signature` (its float rank-2 outputs that are not the scores of a
    top-k pair); `named` (the policy's ``output``) must be one of them (`UsageError` naming
    ``output`` otherwise)."""
    floats = {k: t for k, t in signature.outputs.items()
              if t.rank == 2 and t.tf_dtype in FLOAT_TYPES}
    ints = [t for t in signature.outputs.values() if t.rank == 2 and t.tf_dtype in INT_TYPES]
    topk = []
    for ids in ints:  # each int [batch, k] output pairs with the first float of its width
        scores = next((k for k, t in floats.items() if t.shape[1] == ids.shape[1]
                       and k not in dict(topk)), None)
        if scores is not None:
            topk.append((scores, ids.name))
    rewritten = tuple(k for k in floats if k not in dict(topk))
    float_input = any(t.rank == 4 and t.tf_dtype in FLOAT_TYPES
                      for t in signature.inputs.values())
    if named is not None:
        if named not in rewritten:
            raise invalid("output", named, f"a float [batch, K] output of signature "
                          f"'{signature.name}' ({describe_tensors(signature.outputs)})")
        watched = named
    elif PROBABILITIES in rewritten:
        watched = PROBABILITIES
    else:
        watched = rewritten[0] if len(rewritten) == 1 else None
    return ClassOutputs(rewritten, watched, tuple(topk), float_input)


def answer_outputs(resp: predict_pb2.PredictResponse) -> ClassOutputs:
    """The float rank-2 outputs of an answer, when the signature could not be read."""
    return ClassOutputs(tuple(alias for alias, proto in resp.outputs.items()
                              if proto.dtype in FLOAT_TYPES
                              and len(proto.tensor_shape.dim) == 2))


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _is_distribution(arr: np.ndarray) -> bool:
    if arr.size == 0:
        return False
    return bool(np.all(arr >= -1e-6) and np.allclose(arr.sum(axis=1), 1.0, atol=1e-3))


def as_probabilities(rows: np.ndarray) -> np.ndarray:
    """Class-score rows as probabilities: unchanged when each row is a distribution, else
    softmaxed (logits, or scores that are not a distribution: fail closed, never passed on)."""
    rows = np.asarray(rows, dtype=np.float32)
    return rows if _is_distribution(rows) else _softmax(rows).astype(np.float32)


def _rewritten(resp: predict_pb2.PredictResponse, outputs: ClassOutputs | None) -> tuple[str, ...]:
    """`outputs.rewritten`, then the answer's other float [N, K] outputs."""
    return tuple(dict.fromkeys((outputs.rewritten if outputs else ())
                               + answer_outputs(resp).rewritten))


def degrade_predict_response(response: bytes | predict_pb2.PredictResponse,
                             policy: Callable[[np.ndarray], np.ndarray],
                             outputs: ClassOutputs | None = None) -> bytes:
    """Rewrite the class-score outputs of a Predict answer with an output policy.

    `outputs.rewritten` and every float [N, K] output of the answer itself (fail closed: a
    signature read before the model was reloaded cannot leave a new output untouched) go
    through `policy`: rows that are distributions directly, other rows (logits) as
    log(policy(softmax(rows))) (floored at 1e-30) so they carry no more than the degraded
    probabilities; an int class-id output ([N] or [N, 1]) equal to a rewritten output's argmax
    becomes the rewritten argmax; other outputs are unchanged. The answer keeps its signature
    (same aliases, dtypes and shapes).
    """
    resp = response if isinstance(response, predict_pb2.PredictResponse) else \
        predict_pb2.PredictResponse.FromString(response)
    changed = []  # (argmax before, argmax after) of each rewritten output
    for alias in _rewritten(resp, outputs):
        proto = resp.outputs.get(alias)
        if proto is None or proto.dtype not in FLOAT_TYPES or len(proto.tensor_shape.dim) != 2:
            continue
        arr = codec.to_ndarray(proto)
        if arr.shape[0] == 0:
            continue
        work = arr.astype(np.float32)
        if _is_distribution(work):
            out = policy(work)
        else:
            out = np.log(np.maximum(policy(_softmax(work)), 1e-30))
        resp.outputs[alias].CopyFrom(codec.from_ndarray(np.asarray(out).astype(arr.dtype)))
        changed.append((work.argmax(axis=1), np.asarray(out).argmax(axis=1)))
    _follow_class_ids(resp, changed)
    return resp.SerializeToString()


def _follow_class_ids(resp: predict_pb2.PredictResponse, changed: list) -> None:
    """Class-id outputs ([N] or [N, 1] ints) that were the argmax of a rewritten output become
    its new argmax (a label beside degraded scores must not tell the true top-1)."""
    for alias, proto in resp.outputs.items():
        dims = [d.size for d in proto.tensor_shape.dim]
        if proto.dtype not in INT_TYPES or not (len(dims) == 1 or dims[1:] == [1]):
            continue
        ids = codec.to_ndarray(proto)
        flat = ids.reshape(-1)
        for before, after in changed:
            if len(before) == len(flat) and np.array_equal(before, flat):
                if not np.array_equal(before, after):
                    resp.outputs[alias].CopyFrom(codec.from_ndarray(
                        after.astype(ids.dtype).reshape(ids.shape)))
                break


def watched_probabilities(resp: predict_pb2.PredictResponse, outputs: ClassOutputs,
                          rows: int) -> np.ndarray | None:
    """The victim's class probabilities ``[rows, K]`` in an answer: the `watched` output, else
    (none named, or not in this answer) the first class-score output whose rows are
    distributions, else the first one (softmaxed when not a distribution); None when the answer
    has none with `rows` rows."""
    candidates = []
    aliases = (outputs.watched,) if outputs.watched is not None \
        and outputs.watched in resp.outputs else \
        _rewritten(resp, outputs)
    for alias in aliases:
        proto = resp.outputs.get(alias)
        if proto is not None and proto.dtype in FLOAT_TYPES and \
                len(proto.tensor_shape.dim) == 2:
            arr = codec.to_ndarray(proto).astype(np.float32)
            if len(arr) == rows and arr.shape[1] >= 1:
                if _is_distribution(arr):
                    return arr
                candidates.append(arr)
    return as_probabilities(candidates[0]) if candidates else None
