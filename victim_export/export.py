"""Export a Keras classifier exactly as TensorFlow Serving loads it (ARCHITECTURE.md contract 1).

`export_classifier` writes ``<base_dir>/<name>/<version>/`` (``saved_model.pb`` + ``variables/``)
with one ``serving_default`` signature: input ``images`` (uint8, ``[None, H, W, 3]``, raw pixels)
-> ``probabilities`` (float32 ``[None, K]``, the softmax of the model's logits) and, on request,
``logits``. The dense victims of the exact extraction attacks (Tramèr et al. 2016, Jagielski et
al. 2020) are exported with a float input instead (``input_dtype="float64"``: float64 in, float64
out, optionally flat ``[None, H*W*C]``), so an attacker can query and read them in float64.

The uint8 -> float32 cast happens in the graph; the model's own preprocessing layer
(`common.backbones.BackbonePreprocess`) does the rest, so clients send raw pixels. The version is
written into a hidden temp folder beside it (``.tmp-<version>-<pid>``, a name TF Serving skips:
not an integer) and renamed with `os.replace`, so a server polling the folder never sees a
half-written version. A per-model card ``<base_dir>/<name>/card.json`` (ignored by TF Serving)
describes every version: data, architecture, accuracy, signature. Victims and the surrogates of
later attacks are exported through this one function, in the same layout.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from common.constraints import check_int, is_int
from common.errors import UsageError, invalid
from common.fileio import write_json_atomic

__all__ = ["CARD_NAME", "export_classifier", "next_version", "read_card", "signature_description"]

logger = logging.getLogger(__name__)

CARD_NAME = "card.json"
SIGNATURE_NAME = "serving_default"
_MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def next_version(model_dir: str | os.PathLike[str]) -> int:
    """The next free integer version in `model_dir` (1 when there is none)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return 1
    versions = [int(p.name) for p in model_dir.iterdir() if p.name.isdigit()]
    return max(versions, default=0) + 1


def read_card(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The model card of `model_dir` (``{"name", "versions": {...}}``); empty when absent.

    Raises `UsageError` when the card exists but is not a JSON object.
    """
    path = Path(model_dir) / CARD_NAME
    if not path.exists():
        return {}
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise UsageError(
            f"Cannot read the model card {str(path)!r} ({err}); fix or remove it."
        ) from err
    if not isinstance(card, dict) or not isinstance(card.get("versions", {}), dict):
        raise UsageError(
            f"The model card {str(path)!r} is not a JSON object with a `versions` object; "
            "fix or remove it."
        )
    return card


INPUT_DTYPES = ("uint8", "float32", "float64")


def signature_description(
    input_shape: Sequence[int], num_classes: int, export_logits: bool,
    input_dtype: str = "uint8", flatten: bool = False,
) -> dict[str, Any]:
    """A JSON description of the exported ``serving_default`` signature (-1: any batch size)."""
    out_dtype = "float64" if input_dtype == "float64" else "float32"
    outputs: dict[str, Any] = {
        "probabilities": {"dtype": out_dtype, "shape": [-1, int(num_classes)],
                          "description": "softmax class probabilities"},
    }
    if export_logits:
        outputs["logits"] = {"dtype": out_dtype, "shape": [-1, int(num_classes)],
                             "description": "pre-softmax scores"}
    dims = [int(np.prod(input_shape))] if flatten else list(map(int, input_shape))
    if input_dtype == "uint8":
        text = "raw RGB pixels, 0..255"
    else:
        text = "pixels as floats (the model's own scale)" + (
            ", flattened row-major from " + "x".join(map(str, input_shape)) if flatten else "")
    return {
        "name": SIGNATURE_NAME,
        "method_name": "tensorflow/serving/predict",
        "inputs": {"images": {"dtype": input_dtype, "shape": [-1, *dims],
                              "description": text}},
        "outputs": outputs,
    }


def _check_shape(model: keras.Model, input_shape: Sequence[int] | None,
                 input_dtype: str = "uint8") -> tuple[int, ...]:
    """The serving image shape: (H, W, 3) for uint8 inputs; any fixed shape for float inputs."""
    image = input_dtype == "uint8"
    model_shape = tuple(model.input_shape[1:]) if isinstance(model.input_shape, tuple) else None
    if model_shape is None or (image and len(model_shape) != 3) or not model_shape:
        raise invalid("model", model.name, "a single-input image model [batch, H, W, 3]"
                      if image else "a single-input model with a fixed input shape")
    shape = tuple(model_shape) if input_shape is None else tuple(input_shape)
    if (image and (len(shape) != 3 or shape[2] != 3)) or not shape or any(
        not is_int(v) or v < 1 for v in shape
    ):
        raise invalid("input_shape", input_shape,
                      "(height, width, 3) with positive integers" if image
                      else "positive integers (the model's input shape)")
    if len(shape) != len(model_shape):
        raise invalid("input_shape", input_shape, f"the model's input shape {model_shape}")
    for have, want in zip(model_shape, shape):
        if have is not None and have != want:
            raise invalid("input_shape", input_shape, f"the model's input shape {model_shape}")
    return tuple(int(v) for v in shape)


def export_classifier(
    model: keras.Model,
    base_dir: str | os.PathLike[str],
    name: str,
    *,
    version: int | None = None,
    input_shape: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    export_logits: bool = False,
    card: Mapping[str, Any] | None = None,
    input_dtype: str = "uint8",
    flatten: bool = False,
) -> Path:
    """Export `model` (raw float pixels in, logits out) for TF Serving; return the version dir.

    Args:
        model: a Keras classifier whose input is float32 pixels in [0, 255] and whose output is
            logits ``[batch, K]``, as `common.backbones.build_classifier` builds.
        base_dir: the model base directory (what TF Serving's containers mount as /models).
        name: the model name, the folder ``<base_dir>/<name>``.
        version: the integer version folder; default the next free integer. An existing version
            is never overwritten (`UsageError`).
        input_shape: (H, W, 3) of the serving input; default the model's input shape.
        class_names: K names, recorded in the card; default "0".."K-1".
        export_logits: add a ``logits`` output to the signature.
        card: extra JSON-serialisable facts for this version's card entry (dataset, accuracy...).
        input_dtype: "uint8" (default: raw pixels, cast to float32 in the graph), "float32" or
            "float64" (the floats go to the model as sent, cast to its input dtype; with
            "float64" the outputs are float64 too, so a float64 model serves float64 answers,
            as the exact extraction attacks need). A float input may have any fixed shape.
        flatten: the signature takes [batch, prod(input_shape)] and reshapes it in the graph
            (float inputs only).

    Raises:
        UsageError: on bad arguments or an existing version, before anything is written.
    """
    if not isinstance(name, str) or not _MODEL_NAME_RE.match(name):
        raise invalid("name", name, "a model name of letters, digits, '_', '.' or '-'")
    if input_dtype not in INPUT_DTYPES:
        raise invalid("input_dtype", input_dtype, "one of " + ", ".join(INPUT_DTYPES))
    if not isinstance(flatten, bool) or (flatten and input_dtype == "uint8"):
        raise invalid("flatten", flatten, "False, or True with a float input_dtype")
    shape = _check_shape(model, input_shape, input_dtype)
    output_shape = model.output_shape
    if not isinstance(output_shape, tuple) or len(output_shape) != 2 or not output_shape[1]:
        raise invalid("model", model.name, "a single-output classifier producing [batch, K] logits")
    num_classes = int(output_shape[1])
    if class_names is None:
        class_names = [str(i) for i in range(num_classes)]
    class_names = [str(c) for c in class_names]
    if len(class_names) != num_classes:
        raise invalid("class_names", f"{len(class_names)} names",
                      f"{num_classes} names, one per model output")
    extra = dict(card or {})
    try:
        json.dumps(extra)
    except (TypeError, ValueError) as err:
        raise invalid("card", type(card).__name__, f"a JSON-serialisable mapping ({err})") from err
    model_dir = Path(base_dir) / name
    if model_dir.exists() and not model_dir.is_dir():
        raise invalid("base_dir", str(base_dir), f"a directory where {name}/ can be created")
    existing_card = read_card(model_dir)
    if version is None:
        version = next_version(model_dir)
    else:
        check_int("version", version, min=1)
    final = model_dir / str(version)
    if final.exists():
        raise invalid("version", version,
                      f"a version not yet in {str(model_dir)!r} (next free: "
                      f"{next_version(model_dir)}); versions are never overwritten")

    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = model_dir / f".tmp-{version}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        _write_saved_model(model, tmp, shape, export_logits, input_dtype, flatten)
        try:
            os.replace(tmp, final)
        except OSError as err:
            raise invalid("version", version,
                          f"a version not yet in {str(model_dir)!r} (written concurrently: "
                          f"{err.strerror})") from err
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("exported %s version %d to %s", name, version, final)

    entry = {
        **extra,
        "version": version,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "input_shape": list(shape),
        "num_classes": num_classes,
        "class_names": class_names,
        "export_logits": bool(export_logits),
        "input_dtype": input_dtype,
        "signature": signature_description(shape, num_classes, export_logits, input_dtype,
                                           flatten),
    }
    # Re-read: another export may have added its version since the check above.
    merged = read_card(model_dir) or existing_card
    versions = dict(merged.get("versions", {}))
    versions[str(version)] = entry
    merged.update({
        "name": name,
        "versions": dict(sorted(versions.items(), key=lambda kv: _version_key(kv[0]))),
    })
    write_json_atomic(model_dir / CARD_NAME, merged)
    return final


def _version_key(text: str) -> tuple[int, str]:
    return (int(text), "") if text.isdigit() else (1 << 62, text)


def _write_saved_model(
    model: keras.Model, path: Path, shape: tuple[int, ...], export_logits: bool,
    input_dtype: str = "uint8", flatten: bool = False,
) -> None:
    archive = keras.export.ExportArchive()
    archive.track(model)
    wire = tf.as_dtype(input_dtype)
    feed = tf.float32 if input_dtype == "uint8" else tf.as_dtype(
        getattr(model.inputs[0], "dtype", None) or "float32")
    out = tf.float64 if input_dtype == "float64" else tf.float32

    def serve(images: tf.Tensor) -> dict[str, tf.Tensor]:
        x = tf.reshape(images, [-1, *shape]) if flatten else images
        logits = tf.cast(model(tf.cast(x, feed), training=False), out)
        outputs = {"probabilities": tf.nn.softmax(logits, axis=-1)}
        if export_logits:
            outputs["logits"] = logits
        return outputs

    dims = [int(np.prod(shape))] if flatten else list(shape)
    archive.add_endpoint(
        name=SIGNATURE_NAME,
        fn=serve,
        input_signature=[tf.TensorSpec([None, *dims], wire, name="images")],
    )
    archive.write_out(str(path), verbose=False)


