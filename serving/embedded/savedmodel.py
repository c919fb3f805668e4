"""One loaded SavedModel version, as TensorFlow Serving sees it: its SignatureDefs and callables.

TF Serving reads the `serve` MetaGraphDef of `<base_path>/<version>/saved_model.pb` and runs a
signature by its tensor aliases. We load the same files with `tf.saved_model.load` (TF1 and TF2
SavedModels alike), keep the SignatureDef protos exactly as written (GetModelMetadata returns them
verbatim, method names included, which `tf.saved_model.load` does not expose), and check every
request tensor against the signature's dtype and shape *before* it reaches the graph: TensorFlow
2.21 on oneDNN CPUs aborts the whole process on a Conv2D input of the wrong rank, and the real
server would at best answer with an error from deep inside the graph.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from serving import status
from serving.codec import numpy_to_tf_dtype, tf_dtype_to_numpy
from serving.signature import DEFAULT_SIGNATURE, INIT_OP_SIGNATURE, TensorInfo

__all__ = ["LoadedVersion", "is_complete_version_dir", "read_signature_defs"]

log = logging.getLogger(__name__)

CLASSIFY_METHOD = status.CLASSIFY_METHOD
REGRESS_METHOD = status.REGRESS_METHOD
SERVE_TAG = "serve"
INIT_OP_KEY = INIT_OP_SIGNATURE


def is_complete_version_dir(path: Path) -> bool:
    """True when a version folder holds a whole SavedModel (graph and, if any, variables).

    A folder that an exporter is still writing has no `saved_model.pb` yet, or a variables index
    without its data shards; TF Serving would try (and fail) to load it, we wait for the next poll.
    """
    if not (path / "saved_model.pb").is_file() and not (path / "saved_model.pbtxt").is_file():
        return False
    variables = path / "variables"
    if variables.is_dir():
        names = [p.name for p in variables.iterdir()]
        has_index = "variables.index" in names
        has_data = any(n.startswith("variables.data-") for n in names)
        if has_index != has_data:  # a checkpoint half written (a model without variables has
            return False           # an empty folder, or none)
    return True


def read_signature_defs(path: Path) -> dict[str, meta_graph_pb2.SignatureDef]:
    """The SignatureDefs of the `serve` MetaGraphDef of the SavedModel in `path`."""
    proto = saved_model_pb2.SavedModel()
    pb = path / "saved_model.pb"
    if pb.is_file():
        proto.ParseFromString(pb.read_bytes())
    else:
        from google.protobuf import text_format

        text_format.Parse((path / "saved_model.pbtxt").read_text(), proto)
    for meta_graph in proto.meta_graphs:
        if SERVE_TAG in meta_graph.meta_info_def.tags:
            return dict(meta_graph.signature_def)
    tags = [list(m.meta_info_def.tags) for m in proto.meta_graphs]
    raise ValueError(f"SavedModel at {path} has no MetaGraphDef tagged 'serve' (tag sets: {tags})")


@dataclass
class LoadedVersion:
    """A SavedModel version in memory: SignatureDefs plus the callables that run them."""

    name: str
    version: int
    path: Path
    signature_defs: dict[str, meta_graph_pb2.SignatureDef]
    _loaded: object = field(repr=False, default=None)
    _specs: dict[str, tuple[dict[str, TensorInfo], dict[str, TensorInfo]]] = field(
        repr=False, default_factory=dict
    )

    @classmethod
    def load(cls, name: str, version: int, path: Path) -> "LoadedVersion":
        import tensorflow as tf

        signature_defs = read_signature_defs(path)
        loaded = tf.saved_model.load(os.fspath(path), tags=[SERVE_TAG])
        specs = {}
        for key, sig in signature_defs.items():
            if key == INIT_OP_KEY:
                continue
            inputs = {a: TensorInfo.from_proto(a, t) for a, t in sig.inputs.items()}
            outputs = {a: TensorInfo.from_proto(a, t) for a, t in sig.outputs.items()}
            specs[key] = (inputs, outputs)
        log.info("loaded %s version %d from %s (signatures: %s)", name, version, path,
                 sorted(specs))
        return cls(name, version, path, signature_defs, loaded, specs)

    # -- signatures ------------------------------------------------------------------------------
    def signature(self, key: str) -> meta_graph_pb2.SignatureDef:
        """The SignatureDef for `key` (empty key: `serving_default`), or TF Serving's NOT_FOUND."""
        key = key or DEFAULT_SIGNATURE
        if key not in self._specs:
            raise status.signature_not_found(key)
        return self.signature_defs[key]

    def io_specs(self, key: str) -> tuple[dict[str, TensorInfo], dict[str, TensorInfo]]:
        """The inputs and outputs of signature `key` by alias (`serving.signature.TensorInfo`)."""
        self.signature(key)
        return self._specs[key or DEFAULT_SIGNATURE]

    # -- validation ------------------------------------------------------------------------------
    def check_inputs(self, key: str, arrays: dict[str, np.ndarray]) -> None:
        """Refuse, before the graph, inputs whose dtype, rank or fixed dimensions do not fit.

        The key set itself (missing or extra aliases) is checked by the caller with TF Serving's
        own message; this checks each tensor against its TensorInfo.
        """
        inputs, _ = self.io_specs(key)
        for alias, array in arrays.items():
            spec = inputs[alias]
            got = numpy_to_tf_dtype(array.dtype)
            if got != spec.tf_dtype:
                raise status.dtype_mismatch(spec.tf_dtype, got, sorted(inputs).index(alias))
            if spec.shape is None:
                continue
            if array.ndim != len(spec.shape) or any(
                want is not None and want != have for want, have in zip(spec.shape, array.shape)
            ):
                raise status.shape_mismatch(alias, array.shape, spec.shape)

    # -- running ---------------------------------------------------------------------------------
    def run(self, key: str, arrays: dict[str, np.ndarray],
            output_filter: list[str] | None = None) -> dict[str, np.ndarray]:
        """Run signature `key` on already-checked inputs, returning the requested outputs."""
        import tensorflow as tf

        key = key or DEFAULT_SIGNATURE
        empty = self._empty_batch_outputs(key, arrays, output_filter)
        if empty is not None:
            return empty
        fn = self._loaded.signatures[key]
        feeds = {alias: tf.convert_to_tensor(a) for alias, a in arrays.items()}
        try:
            result = fn(**feeds)
        except tf.errors.OpError as err:  # errors from inside the graph keep TF's code + message
            raise status.from_tf_error(err) from None
        except (TypeError, ValueError) as err:  # a TF2 function refusing its arguments
            raise status.ServingStatus(status.StatusCode.INVALID_ARGUMENT, str(err)) from None
        wanted = output_filter or list(result)
        return {alias: result[alias].numpy() for alias in wanted}

    def _empty_batch_outputs(self, key: str, arrays: dict[str, np.ndarray],
                             output_filter: list[str] | None) -> dict[str, np.ndarray] | None:
        """Answer a batch of zero rows without the graph, when the signature fixes the shapes.

        TensorFlow 2.21's oneDNN Conv2D returns its *input* shape for a zero-row batch, so the
        next layer fails ("Matrix size-incompatible"). Every output of a batch signature with
        zero input rows has zero rows, so we build them from the SignatureDef instead.
        """
        if not arrays or any(a.ndim == 0 or a.shape[0] != 0 for a in arrays.values()):
            return None
        _, outputs = self._specs[key]
        result = {}
        for alias in output_filter or list(outputs):
            spec = outputs[alias]
            if spec.shape is None or not spec.shape or spec.shape[0] is not None \
                    or any(d is None for d in spec.shape[1:]):
                return None
            result[alias] = np.zeros((0, *spec.shape[1:]), dtype=tf_dtype_to_numpy(spec.tf_dtype))
        return result

    def close(self) -> None:
        self._loaded = None
