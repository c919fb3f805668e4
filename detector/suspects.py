"""Open a model to test as a callable uint8 images -> class scores: a SavedModel folder on disk
or a model served over TF Serving's gRPC API (``HOST:PORT`` and a model name).

`open_model` is what `python -m detector.verify` (the suspect and the victim) and
`python -m detector.fingerprint build` (the victim) call. Bad input (not a SavedModel, an
unreachable server, an unknown model) is a `UsageError` naming the argument. TensorFlow, gRPC
and the serving client are imported only by the case that needs them.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

from common.errors import UsageError, invalid

__all__ = ["is_target", "open_model", "saved_model_predict", "served_predict"]

_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?):"
                        r"(\d{1,5})$")


def is_target(text: str) -> bool:
    """Whether `text` is ``HOST:PORT`` (port 1..65535) rather than a folder."""
    m = _HOST_PORT.match(text)
    return bool(m) and 1 <= int(m.group(3)) <= 65535


def saved_model_predict(path: str, who: str = "model") -> Callable[[np.ndarray], np.ndarray]:
    """A SavedModel folder as a callable uint8 images -> class scores (its serving_default
    signature, the `probabilities` output or the first one; images resized to a fixed input)."""
    import tensorflow as tf

    from detector.ood import resolve_version_dir

    try:
        version = resolve_version_dir(path)
    except UsageError:
        raise invalid(who, path, "a SavedModel version folder (saved_model.pb) or a model "
                      "folder holding integer versions") from None
    try:
        loaded = tf.saved_model.load(str(version))
        signature = loaded.signatures["serving_default"]
    except (OSError, KeyError, ValueError) as err:
        raise invalid(who, path, f"a SavedModel with a serving_default signature ({err})") \
            from None
    inputs = signature.structured_input_signature[1]
    if len(inputs) != 1:
        raise invalid(who, path, f"a signature with one image input (got {sorted(inputs)})")
    (name, spec), = inputs.items()
    size = tuple(spec.shape[1:3]) if spec.shape.rank == 4 else None

    def predict(images: np.ndarray) -> np.ndarray:
        x = tf.constant(images)
        if size and None not in size and tuple(images.shape[1:3]) != size:
            x = tf.cast(tf.clip_by_value(tf.round(tf.image.resize(x, size, antialias=True)),
                                         0, 255), tf.uint8)
        outs = signature(**{name: tf.cast(x, spec.dtype)})
        key = "probabilities" if "probabilities" in outs else sorted(outs)[0]
        return np.asarray(outs[key], dtype=np.float32)

    predict.keepalive = loaded  # type: ignore[attr-defined]
    return predict


def served_predict(target: str, model: str, who: str = "model", *, timeout: float = 10.0,
                   api_key: str | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """A served model as a callable uint8 images -> class scores (with a ``close``)."""
    import grpc

    channel = grpc.insecure_channel(target)
    try:  # a cheap reachability check before the TensorFlow-backed client is imported
        grpc.channel_ready_future(channel).result(timeout=min(timeout, 5.0))
    except grpc.FutureTimeoutError:
        raise invalid(who, target, f"a reachable TF Serving address (no connection within "
                      f"{min(timeout, 5.0):g} s)") from None
    finally:
        channel.close()
    from serving.client import ServingClient

    client = ServingClient(target, model, api_key=api_key, timeout=timeout, retries=0)
    try:
        client.metadata()
    except UsageError:
        client.close()
        raise
    except Exception as err:  # noqa: BLE001 - unreachable, unknown model...: one line
        client.close()
        raise invalid(who, target, f"a reachable TF Serving model {model!r} "
                      f"({type(err).__name__}: {' '.join(str(err).split())[:200]})") from None

    def predict(images: np.ndarray) -> np.ndarray:
        try:
            return np.asarray(client.predict(images), dtype=np.float32)
        except UsageError:
            raise
        except Exception as err:  # noqa: BLE001
            raise invalid(who, target, f"a model that answers Predict ({type(err).__name__}: "
                          f"{' '.join(str(err).split())[:200]})") from None

    predict.close = client.close  # type: ignore[attr-defined]
    return predict


def open_model(where: str, model: str | None, who: str = "model", *, timeout: float = 10.0,
               api_key: str | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """`where` is ``HOST:PORT`` (served, `model` its name) or a SavedModel folder."""
    if is_target(where):
        return served_predict(where, model, who, timeout=timeout, api_key=api_key)
    return saved_model_predict(where, who)
