"""The victim an extraction attack steals from, behind one interface whatever its export.

A victim is anything that answers images: a TF Serving model over gRPC (`ServingVictim`, the
project's `serving.client.ServingClient`), over TF Serving's REST port only (`RestVictim`,
``--rest http://host:8501``), or an in-process Keras model or SavedModel (`KerasVictim`, for unit
tests and offline studies; it counts queries exactly like the others). Knockoff Nets (Orekondy
et al. 2019) and its family only need `metadata()` and `predict(images)`; what a model exported
by somebody else needs beyond that is understood here before the budget is spent
(ARCHITECTURE.md, contract 2): the input value range (uint8 is 0..255; a float input is 0..255,
[0, 1] or [-1, 1], given or decided by `understand` from a few probe answers), the output to
learn from and its kind (probabilities, logits, one-hot labels from class ids, top-k pairs),
checked on the first paid batch by `check_answers`. Every answer is returned in one "journal
form", float32 [n, K], which `to_probabilities` turns into training targets. `describe()` is
what the report states about how the victim was queried, and `consistency` says when the
accuracy measured through this path does not fit the answers (saturated or one-class answers:
a wrong range or output).

    with open_victim(config) as victim:
        victim.understand(transfer_images[:64], run_dir / "victim.json")
        raw = victim.predict(images, on_send=..., on_result=...)   # journal form
        victim.check_answers(raw)
        targets = victim.to_probabilities(raw)
"""

from __future__ import annotations

import abc
import dataclasses
import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from attack import probe
from common.constraints import check_int
from common.errors import invalid

__all__ = [
    "INPUT_RANGES",
    "OUTPUT_KINDS",
    "KerasVictim",
    "RestVictim",
    "ServingVictim",
    "Victim",
    "consistency",
    "open_victim",
]

logger = logging.getLogger(__name__)

INPUT_RANGES = probe.INPUT_RANGES
OUTPUT_KINDS = probe.OUTPUT_KINDS
PROBE_IMAGES = 21
"""Probe images per candidate range: 3 candidates x 21 = 63 queries, within the 64 goal."""
KIND_PROBE_IMAGES = 16
"""Probe images spent to tell the output kind when the range needs no probing."""

SendFn = Callable[[int, int], None]
ResultFn = Callable[[int, np.ndarray], None]


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise invalid(name, value, "one of " + " | ".join(choices))
    return value  # type: ignore[return-value]


class Victim(abc.ABC):
    """An image classifier to steal from; also a context manager (`close()` on exit).

    Args:
        output: the output tensor to learn from; None: chosen from the signature and stated.
        output_kind: ``auto`` (decided from the signature and the first answers),
            ``probabilities``, ``logits`` (softmax applied), ``labels`` (class ids or one-hot
            rows) or ``topk`` ((scores, classes) pairs).
        input_range: ``auto`` (uint8: 0..255; otherwise decided from probe answers), ``0,255``,
            ``0,1`` or ``-1,1``: the values pixel 0..255 are mapped to.
        num_classes: K when the outputs do not tell it (class ids only, top-k pairs).
        batch_size: images per request.
    """

    interface = "victim"

    def __init__(self, *, output: str | None = None, output_kind: str = "auto",
                 input_range: str = "auto", num_classes: int | None = None,
                 batch_size: int = 64) -> None:
        if output is not None and (not isinstance(output, str) or not output):
            raise invalid("output", output, "an output name or None")
        self.output = output
        self.output_kind_flag = _check_choice("output_kind", output_kind,
                                              ("auto", *OUTPUT_KINDS))
        self.input_range_flag = probe.parse_input_range(input_range)
        check_int("num_classes", num_classes, min=2, optional=True)
        check_int("batch_size", batch_size, min=1, expected="an integer >= 1")
        self.num_classes_flag = num_classes
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._info = None
        self._choice: probe.OutputChoice | None = None
        self._range: str | None = None
        self._range_why = ""
        self._kind: str | None = None
        self._kind_why = ""
        self._probe_queries = 0
        self._evidence: dict | None = None

    # -- what subclasses provide ------------------------------------------------------------------
    @abc.abstractmethod
    def signature(self):
        """The signature as `serving.client.Signature` (all inputs and outputs)."""

    @abc.abstractmethod
    def _send(self, x: np.ndarray, names: tuple[str, ...], on_send: SendFn | None,
              on_result: Callable[[int, dict], None] | None) -> dict[str, np.ndarray]:
        """Send the adapted-range images `x` (values in the input range, any size/channels:
        the transport adapts size, channels and dtype) and return the decoded outputs."""

    @property
    @abc.abstractmethod
    def queries(self) -> int:
        """Images answered so far (probes included)."""

    def target(self) -> str:
        return ""

    def model_name(self) -> str:
        return ""

    def close(self) -> None:  # noqa: B027 (nothing to release by default)
        """Release the connection; idempotent."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the signature ----------------------------------------------------------------------------
    def metadata(self):
        """The image-classifier view of the signature (`serving.client.SignatureInfo`):
        input name, dtype, shape, `image_size` (None when variable), `channels`,
        `probabilities` (the output learnt from) and `num_classes` (K)."""
        from serving.client import SignatureInfo

        with self._lock:
            if self._info is not None:
                return self._info
        sig = self.signature()
        image = _image_input(sig, self.model_name())
        choice = probe.choose_outputs(sig.outputs, self.output, self.output_kind_flag)
        if self.output_kind_flag in ("probabilities", "logits") and choice.kind == "topk" \
                and self.output is None:
            choice = dataclasses.replace(choice, classes=None, kind=None)
        k = self.num_classes_flag
        main = sig.outputs[choice.name]
        width = None if main.shape is None or len(main.shape) < 2 else main.shape[-1]
        if choice.kind in ("labels", "topk"):
            if k is None:
                others = [t.shape[-1] for n, t in sig.outputs.items() if n not in choice.names
                          and np.issubdtype(t.dtype, np.floating) and t.shape is not None
                          and len(t.shape) == 2 and t.shape[-1] and t.shape[-1] > 1]
                k = max(others) if others else None
            if k is None:
                raise invalid("num_classes", None, f"the number of classes: output "
                              f"'{choice.name}' of model '{self.model_name()}' gives "
                              f"{'class ids' if choice.kind == 'labels' else 'top-k pairs'} "
                              "and no output tells K (pass --num-classes)")
        elif width is None:
            if k is None:
                raise invalid("num_classes", None, f"the number of classes: output "
                              f"'{choice.name}' has no fixed width (pass --num-classes)")
        elif k is not None and k != width:
            raise invalid("num_classes", k, f"{width}, the width of output '{choice.name}'")
        else:
            k = width
        _, height, width_px, channels = image.shape
        info = SignatureInfo(
            name=sig.name, method_name=sig.method_name, input_name=image.name,
            input_dtype=image.dtype, input_shape=image.shape,
            output_names=tuple(sig.outputs), output_dtypes=tuple(t.dtype for t in
                                                                 sig.outputs.values()),
            output_shapes=tuple(t.shape for t in sig.outputs.values()),
            probabilities=choice.name,
            image_size=None if height is None or width_px is None else (height, width_px),
            channels=channels, classes=int(k),
        )
        self._on_choice(choice)
        with self._lock:
            self._info, self._choice = info, choice
            if self._kind is None:
                if self.output_kind_flag != "auto":
                    self._kind, self._kind_why = self.output_kind_flag, "--output-kind"
                elif choice.kind is not None:
                    self._kind, self._kind_why = choice.kind, "the signature: " + choice.reason
            if self._range is None:
                if info.input_dtype == np.uint8:
                    if self.input_range_flag not in ("auto", "0,255"):
                        raise invalid("input_range", self.input_range_flag,
                                      f"0,255 or auto: input '{image.name}' is uint8")
                    self._range, self._range_why = "0,255", "the input dtype is uint8"
                elif self.input_range_flag != "auto":
                    self._range, self._range_why = self.input_range_flag, "--input-range"
        return info

    def _on_choice(self, choice: probe.OutputChoice) -> None:
        """Hook: the transport learns which outputs will be asked for."""

    @property
    def signature_name(self) -> str:
        """The signature called (``serving_default`` unless one was named)."""
        return getattr(self, "_signature_name", "serving_default")

    @property
    def output_choice(self) -> probe.OutputChoice:
        self.metadata()
        return self._choice  # type: ignore[return-value]

    @property
    def input_range(self) -> str | None:
        """The range pixels are sent in (None until decided)."""
        self.metadata()
        return self._range

    @property
    def output_kind(self) -> str | None:
        """The output kind in use (None until decided)."""
        self.metadata()
        return self._kind

    @property
    def probe_queries(self) -> int:
        return self._probe_queries

    # -- answers ----------------------------------------------------------------------------------
    def predict(self, images: Any, *, on_send: SendFn | None = None,
                on_result: ResultFn | None = None) -> np.ndarray:
        """Answers to `images` (uint8 RGB [n, H, W, C], any size: adapted to the signature) in
        journal form, float32 [n, K]; `on_send(first_row, rows)` before each request goes on
        the wire, `on_result(first_row, rows_answers)` as each request's answers arrive.

        Before `understand` has decided an ``auto`` range or kind, the first images serve as
        its probe (those queries count in `queries`)."""
        info = self.metadata()
        array = _check_pixels(images)
        if self._range is None or self._kind is None:
            self.understand(array[:PROBE_IMAGES])
        return self._predict(array, info, on_send, on_result, self._range, self._kind)

    def _predict(self, array: np.ndarray, info, on_send, on_result, input_range: str,
                 kind: str | None) -> np.ndarray:
        choice = self._choice
        k = int(info.num_classes)
        form_kind = kind or "probabilities"
        x = array if input_range == "0,255" and np.issubdtype(info.input_dtype, np.integer) \
            else probe.scale_pixels(array, input_range)
        hook = None
        if on_result is not None:
            def hook(first: int, decoded: dict) -> None:
                on_result(first, probe.journal_form(decoded, choice, form_kind, k))
        decoded = self._send(x, choice.names, on_send, hook)
        return probe.journal_form(decoded, choice, form_kind, k)

    def check_answers(self, raw: np.ndarray) -> None:
        """`UsageError` naming ``--output-kind`` when `raw` (journal form) does not fit the
        output kind in use (e.g. rows that are not distributions under ``probabilities``)."""
        self.metadata()
        probe.check_kind(raw, self._kind or "probabilities", self._choice.name)

    def to_probabilities(self, raw: np.ndarray) -> np.ndarray:
        """Journal form -> float32 rows summing to 1 (softmax for logits, identity for
        probabilities and one-hot labels, renormalised scores for top-k)."""
        self.metadata()
        return probe.to_probabilities(raw, self._kind or "probabilities")

    # -- understanding ----------------------------------------------------------------------------
    def understand(self, probe_images: Any, evidence_path: str | os.PathLike | None = None
                   ) -> dict:
        """Decide an ``auto`` input range and output kind from probe answers, write the
        evidence JSON to `evidence_path`, and return it. Idempotent: a second call (or one
        whose `evidence_path` already holds a decision under the same flags, e.g. on resume)
        spends no queries. Probe queries count in `queries` and are not journaled; at most
        3 x 21 = 63 when the range is probed, 16 when only the kind is."""
        info = self.metadata()
        if self._evidence is not None and self._range is not None and self._kind is not None:
            if evidence_path is not None:
                _write_json(Path(evidence_path), self._evidence)
            return self._evidence
        if evidence_path is not None and Path(evidence_path).is_file():
            self._adopt(Path(evidence_path))
        array = _check_pixels(probe_images)
        candidates: dict[str, dict] = dict(getattr(self, "_old_candidates", {}))
        spent_before = self.queries
        kind = self._kind
        if self._range is None:
            n = min(PROBE_IMAGES, len(array))
            if n < 4:
                raise invalid("probe_images", f"{len(array)} images",
                              "at least 4 images to decide --input-range auto (or pass it)")
            answers = {c: self._predict(array[:n], info, None, None, c, kind)
                       for c in INPUT_RANGES}
            if kind is None:
                seen = {c: probe.answer_kind(a) for c, a in answers.items()}
                kind = _vote_kind(seen)
                self._kind_why = ("the probe answers: " + ", ".join(
                    f"{c} -> {s}" for c, s in seen.items()))
            for c, a in answers.items():
                candidates[c] = probe.range_statistics(a, kind)
            self._range, self._range_why = probe.decide_range(candidates)
            self._range_why = "auto: " + self._range_why
            self._kind = kind
        elif kind is None:
            n = min(KIND_PROBE_IMAGES, len(array))
            if n < 1:
                raise invalid("probe_images", "0 images", "at least one image to decide "
                              "--output-kind auto (or pass it)")
            answers = self._predict(array[:n], info, None, None, self._range, None)
            self._kind = probe.answer_kind(answers)
            self._kind_why = f"the probe answers ({n} images) look like {self._kind}"
            candidates[self._range] = probe.range_statistics(answers, self._kind)
        self._probe_queries += self.queries - spent_before
        self._evidence = self._make_evidence(candidates)
        logger.info("victim %s: input range %s (%s); output '%s' as %s (%s); %d probe queries",
                    self.model_name(), self._range, self._range_why, self._choice.name,
                    self._kind, self._kind_why, self._probe_queries)
        if evidence_path is not None:
            _write_json(Path(evidence_path), self._evidence)
        return self._evidence

    def _flags(self) -> dict:
        return {"output": self.output, "output_kind": self.output_kind_flag,
                "input_range": self.input_range_flag, "num_classes": self.num_classes_flag}

    def _adopt(self, path: Path) -> None:
        """Take the decisions of an earlier `understand` written at `path` (same flags)."""
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        flags = old.get("flags", {})
        same_signature = (old.get("signature") == self._info.name
                          and old.get("output", {}).get("name") == self._choice.name)
        if not same_signature:
            return
        if self._range is None and flags.get("input_range") == self.input_range_flag:
            self._range = old.get("input_range", {}).get("value")
            self._range_why = _earlier(old.get("input_range", {}).get("decided_by", ""))
            self._probe_queries = int(old.get("probe_queries", 0))
            self._old_candidates = dict(old.get("input_range", {}).get("candidates", {}))
        if self._kind is None and flags.get("output_kind") == self.output_kind_flag \
                and flags.get("output") == self.output:
            self._kind = old.get("output", {}).get("kind")
            self._kind_why = _earlier(old.get("output", {}).get("decided_by", ""))

    def _make_evidence(self, candidates: dict) -> dict:
        info = self._info
        return {
            "interface": self.interface,
            "target": self.target(),
            "model": self.model_name(),
            "signature": info.name,
            "flags": self._flags(),
            "input": {"name": info.input_name, "dtype": np.dtype(info.input_dtype).name,
                      "shape": [None if d is None else int(d) for d in info.input_shape],
                      "image_size": None if info.image_size is None else list(info.image_size),
                      "channels": info.channels},
            "input_range": {"value": self._range, "decided_by": self._range_why,
                            "candidates": candidates},
            "output": {"name": self._choice.name, "classes": self._choice.classes,
                       "kind": self._kind, "decided_by": self._kind_why,
                       "chosen_because": self._choice.reason,
                       "num_classes": int(info.num_classes)},
            "probe_queries": self._probe_queries,
        }

    def describe(self) -> dict:
        """How the victim is queried, for the report: interface, target, model, signature,
        input (name, dtype, shape), input range and how it was decided, output tensor and
        kind and why, K, probe queries and queries so far."""
        info = self.metadata()
        return {
            "interface": self.interface,
            "target": self.target(),
            "model": self.model_name(),
            "signature": info.name,
            "input": f"{info.input_name}: {np.dtype(info.input_dtype).name}"
                     f"[{','.join('-1' if d is None else str(d) for d in info.input_shape)}]",
            "input_range": self._range,
            "input_range_decided_by": self._range_why,
            "output": self._choice.name,
            "output_classes": self._choice.classes,
            "output_kind": self._kind,
            "output_decided_by": self._kind_why or self._choice.reason,
            "num_classes": int(info.num_classes),
            "probe_queries": self._probe_queries,
            "queries": self.queries,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(target={self.target()!r}, model={self.model_name()!r})"


# -- gRPC ------------------------------------------------------------------------------------------
class _ClientVictim(Victim):
    """A victim behind a client (gRPC or REST): the query count, the model name and closing
    are the client's."""

    client: Any

    @property
    def queries(self) -> int:
        return self.client.queries

    def model_name(self) -> str:
        return self.client.model

    def close(self) -> None:
        self.client.close()


class ServingVictim(_ClientVictim):
    """A TF Serving model over gRPC, through `serving.client.ServingClient` (retries, bounded
    requests in flight, one `ServingError` type). Pass a `client` or the endpoint."""

    interface = "grpc"

    def __init__(self, target: str | None = None, model: str = "default", *, client=None,
                 version: int | None = None, signature: str = "serving_default",
                 api_key: str | None = None, timeout: float = 60.0, in_flight: int = 4,
                 batch_size: int = 64, output: str | None = None, output_kind: str = "auto",
                 input_range: str = "auto", num_classes: int | None = None) -> None:
        super().__init__(output=output, output_kind=output_kind, input_range=input_range,
                         num_classes=num_classes, batch_size=batch_size)
        if client is None:
            from serving.client import ServingClient

            if target is None:
                raise invalid("target", None, "a gRPC target HOST:PORT or a client")
            client = ServingClient(target, model, version=version, signature=signature,
                                   output=output, api_key=api_key, timeout=timeout,
                                   max_in_flight=in_flight, batch_size=batch_size)
        self.client = client
        self._signature_name = client.signature_name

    def signature(self):
        return self.client.signature()

    def _on_choice(self, choice: probe.OutputChoice) -> None:
        self.client.output = choice.name  # the client's own view then agrees (no ambiguity)

    def _send(self, x, names, on_send, on_result):
        out = self.client.predict(x, outputs=list(names), on_send=on_send, on_result=on_result)
        return out

    def target(self) -> str:
        return self.client.target


# -- REST ------------------------------------------------------------------------------------------
class RestVictim(_ClientVictim):
    """A TF Serving model through its REST API only (``http://host:8501``): the signature from
    ``GET /v1/models/NAME/metadata``, answers from ``:predict`` with rows (``instances``)."""

    interface = "rest"

    def __init__(self, url: str, model: str = "default", *, version: int | None = None,
                 signature: str = "serving_default", api_key: str | None = None,
                 timeout: float = 60.0, in_flight: int = 4, batch_size: int = 64,
                 output: str | None = None, output_kind: str = "auto",
                 input_range: str = "auto", num_classes: int | None = None) -> None:
        super().__init__(output=output, output_kind=output_kind, input_range=input_range,
                         num_classes=num_classes, batch_size=batch_size)
        from serving.rest_client import RestClient

        self.client = RestClient(url, model, version=version, signature=signature,
                                 api_key=api_key, timeout=timeout, max_in_flight=in_flight,
                                 batch_size=batch_size)
        self._signature_name = signature

    def signature(self):
        return self.client.signature()

    def _send(self, x, names, on_send, on_result):
        info = self._info
        return self.client.predict(x, info, names, on_send=on_send, on_result=on_result)

    def target(self) -> str:
        return self.client.url


# -- in-process ------------------------------------------------------------------------------------
class KerasVictim(Victim):
    """An in-process `keras.Model` or a SavedModel directory (its `signature`), answering in
    batches of `batch_size` with the same hooks and the same query count as a served victim.

    A Keras model's outputs are named like `model.export()` names them (``output_0``, ...,
    or the keys of a dict output); its input is ``inputs``.
    """

    interface = "keras"

    def __init__(self, model: Any, *, signature: str = "serving_default", batch_size: int = 64,
                 output: str | None = None, output_kind: str = "auto",
                 input_range: str = "auto", num_classes: int | None = None,
                 name: str | None = None) -> None:
        super().__init__(output=output, output_kind=output_kind, input_range=input_range,
                         num_classes=num_classes, batch_size=batch_size)
        self._queries = 0
        self._count_lock = threading.Lock()
        self._signature_name = signature
        self._path = None
        if isinstance(model, (str, os.PathLike)):
            path = Path(model)
            if not (path / "saved_model.pb").is_file():
                raise invalid("model", str(model), "a keras.Model or a SavedModel directory "
                              "(with saved_model.pb)")
            import tensorflow as tf

            self._path = path
            loaded = tf.saved_model.load(str(path))
            if signature not in loaded.signatures:
                raise invalid("signature", signature, f"one of the signatures of {path}: "
                              f"{sorted(loaded.signatures)}")
            self._loaded = loaded
            self._fn = loaded.signatures[signature]
            self._name = name or (path.parent.name if path.name.isdigit() else path.name)
        else:
            if not callable(model):
                raise invalid("model", type(model).__name__,
                              "a keras.Model or a SavedModel directory")
            if not hasattr(model, "inputs"):  # a Sequential without an Input, never called
                raise invalid("model", type(model).__name__,
                              "a built keras.Model: give the Sequential a keras.Input(shape) "
                              "first, or call it once on a batch")
            self._fn = None
            self._model = model
            self._name = name or getattr(model, "name", "keras")

    def signature(self):
        from serving.client import Signature, TensorInfo

        if self._fn is not None:
            _, kwargs = self._fn.structured_input_signature
            inputs = {k: TensorInfo(k, np.dtype(s.dtype.as_numpy_dtype),
                                    None if s.shape.rank is None else tuple(s.shape.as_list()))
                      for k, s in sorted(kwargs.items())}
            outputs = {k: TensorInfo(k, np.dtype(s.dtype.as_numpy_dtype),
                                     None if s.shape.rank is None else tuple(s.shape.as_list()))
                       for k, s in sorted(self._fn.structured_outputs.items())}
            return Signature(self._signature_name, "tensorflow/serving/predict", inputs, outputs)
        model = self._model
        if len(model.inputs) != 1:
            raise invalid("model", self._name, "a Keras model with one image input")
        spec = model.inputs[0]
        inputs = {"inputs": TensorInfo("inputs", np.dtype(spec.dtype),
                                       tuple(spec.shape))}
        outputs = {}
        for key, t in self._keras_outputs().items():
            outputs[key] = TensorInfo(key, np.dtype(t.dtype), tuple(t.shape))
        return Signature(self._signature_name, "tensorflow/serving/predict", inputs, outputs)

    def _keras_outputs(self) -> dict:
        out = self._model.outputs
        try:
            structured = self._model.output
        except AttributeError:  # a Sequential built from keras.Input has outputs, no .output
            structured = None
        if isinstance(structured, Mapping):
            return dict(sorted(structured.items()))
        return {f"output_{i}": t for i, t in enumerate(out)}

    def _call(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self._fn is not None:
            import tensorflow as tf

            info = self._info
            result = self._fn(**{info.input_name: tf.constant(batch)})
            return {k: np.asarray(v) for k, v in result.items()}
        result = self._model(batch, training=False)
        if isinstance(result, Mapping):
            return {k: np.asarray(v) for k, v in result.items()}
        if isinstance(result, (list, tuple)):
            return {f"output_{i}": np.asarray(v) for i, v in enumerate(result)}
        return {"output_0": np.asarray(result)}

    def _send(self, x, names, on_send, on_result):
        from serving.client import adapt_images

        info = self._info
        parts: dict[str, list] = {n: [] for n in names}
        for first in range(0, len(x), self.batch_size):
            batch = x[first:first + self.batch_size]
            if on_send is not None:
                on_send(first, len(batch))
            decoded = self._call(adapt_images(np.asarray(batch), info))
            missing = [n for n in names if n not in decoded]
            if missing:
                raise invalid("output", missing, f"outputs of the model: {sorted(decoded)}")
            decoded = {n: decoded[n] for n in names}
            with self._count_lock:
                self._queries += len(batch)
            if on_result is not None:
                on_result(first, decoded)
            for n in names:
                parts[n].append(decoded[n])
        if not len(x):
            return {n: np.zeros((0,), np.float32) for n in names}
        return {n: np.concatenate(v, axis=0) for n, v in parts.items()}

    @property
    def queries(self) -> int:
        with self._count_lock:
            return self._queries

    def target(self) -> str:
        return str(self._path) if self._path is not None else "in-process"

    def model_name(self) -> str:
        return self._name


# -- opening one from a config ---------------------------------------------------------------------
def open_victim(config: Any) -> Victim:
    """The victim of an attack config's endpoint fields (read with defaults, so an older
    config works): ``rest`` (a URL: REST is used) or ``grpc``, ``model``, ``version``,
    ``signature``, ``output``, ``output_kind``, ``input_range``, ``num_classes``,
    ``api_key``, ``timeout``, ``in_flight``, ``query_batch``."""
    common = dict(
        version=getattr(config, "version", None),
        signature=getattr(config, "signature", None) or "serving_default",
        api_key=getattr(config, "api_key", None),
        timeout=getattr(config, "timeout", 60.0),
        in_flight=getattr(config, "in_flight", 4),
        batch_size=getattr(config, "query_batch", 64),
        output=getattr(config, "output", None),
        output_kind=getattr(config, "output_kind", None) or "auto",
        input_range=getattr(config, "input_range", None) or "auto",
        num_classes=getattr(config, "num_classes", None),
    )
    model = getattr(config, "model", "default")
    rest = getattr(config, "rest", None)
    if rest:
        return RestVictim(rest, model, **common)
    return ServingVictim(getattr(config, "grpc", "localhost:8500"), model, **common)


# -- the report's consistency check ----------------------------------------------------------------
def consistency(accuracy: float | None, probabilities: np.ndarray,
                num_classes: int | None = None) -> list[str]:
    """Warnings (sentences; empty when nothing looks wrong) about a victim accuracy measured
    through the victim path, given the victim's answers (rows summing to 1) on the test set.

    Flags answers that give one class to more than 90% of the test images (saturated: a wrong
    input range or output), answers that are mostly saturated (over 60 nats between the two
    most likely classes) and a near-chance accuracy (within 1.5x of 1/K) while the answers are
    confident (mean top probability above 0.8): what a model fed the wrong pixel range looks
    like.
    """
    probs = np.asarray(probabilities, dtype=np.float64)
    notes: list[str] = []
    if probs.ndim != 2 or not len(probs):
        return notes
    k = num_classes or probs.shape[1]
    top = probs.argmax(axis=1)
    share = float(np.bincount(top, minlength=probs.shape[1]).max() / len(top))
    if share > 0.9:
        notes.append(f"the victim answered one class for {share:.0%} of the test images: its "
                     "input range or output may be wrong (see victim.json); the measured "
                     "victim accuracy is likely not the model's")
    # the gap between the two most likely classes: unaffected by the zeros of top-k rows
    top2 = np.sort(probs, axis=1)[:, -2:] if probs.shape[1] > 1 else np.ones((len(probs), 2))
    logp = np.log(np.clip(top2, 1e-45, None))
    saturated = float(((logp[:, 1] - logp[:, 0]) >= 60).mean())
    if saturated > 0.5 and probs.shape[1] > 2 and not ((probs == 0) | (probs == 1)).all():
        notes.append(f"{saturated:.0%} of the victim's answers are saturated (a logit gap over "
                     "60 nats): the pixels may be sent at too large a scale (--input-range)")
    confidence = float(probs.max(axis=1).mean())
    if accuracy is not None and k and accuracy < 1.5 / k and confidence > 0.8:
        notes.append(f"victim accuracy {accuracy:.1%} is near chance (1/{k}) while its answers "
                     f"are confident (mean top probability {confidence:.2f}): the test set, "
                     "its labels or the input range do not match the victim")
    return notes


# -- helpers ---------------------------------------------------------------------------------------
def _image_input(sig, model: str):
    images = [t for t in sig.inputs.values() if t.rank == 4]
    where = f"signature '{sig.name}' of model '{model}'"
    if len(images) != 1:
        raise invalid("signature", sig.name, f"an image classifier signature with one input "
                      f"[batch, H, W, C]; {where} has inputs "
                      f"{ {k: (t.dtype.name, t.shape) for k, t in sig.inputs.items()} }")
    image = images[0]
    missing = sorted(k for k in sig.inputs if k != image.name and k not in sig.defaults)
    if missing:
        raise invalid("signature", sig.name, f"an image classifier signature; {where} also "
                      f"requires the inputs {missing}")
    if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise invalid("signature", sig.name, f"a numeric image input; '{image.name}' is "
                      f"{image.dtype.name}")
    if image.shape[3] not in (None, 1, 3, 4):
        raise invalid("signature", sig.name, f"1, 3 or 4 channels; '{image.name}' has "
                      f"{image.shape[3]}")
    return image


def _check_pixels(images: Any) -> np.ndarray:
    try:
        array = np.asarray(images)
    except (TypeError, ValueError) as err:
        raise invalid("images", type(images).__name__, "uint8 RGB images [n, H, W, C]") from err
    if array.ndim != 4 or not (np.issubdtype(array.dtype, np.integer)
                               or np.issubdtype(array.dtype, np.floating)):
        raise invalid("images", f"array {array.dtype}{list(array.shape)}",
                      "uint8 RGB images [n, H, W, C] (pixels 0..255)")
    return array


def _earlier(why: str) -> str:
    return why if why.endswith(" (earlier run)") else why + " (earlier run)"


def _vote_kind(seen: Mapping[str, str]) -> str:
    """One kind from the kinds the answers looked like under each candidate range."""
    kinds = set(seen.values())
    if kinds == {"labels"}:
        return "labels"
    if "logits" in kinds:
        return "logits"
    return "probabilities"


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")

