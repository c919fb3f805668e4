"""``python -m detector.verify``: was a suspect model stolen from ours? DAWN's watermark test.

DAWN (Szyller et al. 2021, `detector.watermark`): the gateway answered a keyed fraction of a
client's queries with a wrong label and kept them. A surrogate trained on those answers tends to
reproduce the wrong labels; a model that never saw them agrees with each one with probability at
most ``1 / (K - 1)`` (the wrong label is drawn by the key uniformly among the K-1 classes other
than the victim's top-1, independently of any model that did not see the answers). So with n
replayed watermark queries of which k are answered with the wrong label by the suspect, the
one-sided binomial test ``P[Binomial(n, 1/(K-1)) >= k]`` is a valid p-value for "the suspect did
not learn from these answers"; the suspect is declared stolen when it is below ``--alpha``.

    python -m detector.verify --suspect 127.0.0.1:8600 --suspect-model stolen \\
        --victim victims/cifar10_cnn --watermarks sqlite:gateway_state.db --client mallory

`--suspect` and `--victim` are a served model (HOST:PORT, with ``--suspect-model`` /
``--victim-model``) or a SavedModel folder on disk (a version folder or a model folder holding
integer versions; uint8 ``images`` -> ``probabilities``). `--watermarks` is an ``.npz`` written by
`detector.watermark.save_watermarks` or the gateway's state (``sqlite:PATH`` or
``redis://...``) with ``--client``. At most ``--max-queries`` watermarks are replayed against the
suspect (the queries spent); the victim answers the same images to check that the class counts
match and that the victim itself does not give the wrong labels. Bad input (an unreachable
suspect, a different class count, no watermark for the client) is one line and exit code 2.

This is a command-line tool at the edge: the served case opens a gRPC client
(`serving.client`) and the state case the gateway's store, both imported only when used; the
test itself (`verify_watermarks`) is numpy and scipy.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from common.errors import UsageError, invalid
from detector.watermark import WatermarkRecord, agreement, load_watermarks

__all__ = ["VerifyConfig", "VerifyResult", "main", "run_verify", "saved_model_predict",
           "verify_watermarks"]

log = logging.getLogger(__name__)

PROG = "python -m detector.verify"
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?):"
                        r"(\d{1,5})$")


@dataclass(frozen=True)
class VerifyResult:
    """The test's outcome: k of n watermark queries answered with the wrong label."""

    stolen: bool
    p_value: float
    agreeing: int
    compared: int
    chance: float
    alpha: float
    classes: int
    suspect_queries: int
    victim_agreeing: int | None = None
    suspect_top1_agreement: float | None = None

    def line(self) -> str:
        decision = "STOLEN (watermarks reproduced)" if self.stolen else "not identified"
        text = (f"{decision}: the suspect gave the watermark's wrong label on {self.agreeing} of "
                f"{self.compared} watermark queries (chance for a model that never saw them "
                f"<= 1/(K-1) = {self.chance:.4f}, K={self.classes}); one-sided binomial p-value "
                f"{self.p_value:.3g} (alpha {self.alpha:g}); {self.suspect_queries} queries to "
                "the suspect")
        if self.victim_agreeing is not None:
            text += (f"; the victim itself gives the wrong label on {self.victim_agreeing} of "
                     f"them and its own top-1 on {self.suspect_top1_agreement:.0%} of the "
                     "suspect's answers")
        return text


def _predict_classes(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray,
                     who: str) -> np.ndarray:
    probs = np.asarray(predict(images))
    if probs.ndim != 2 or len(probs) != len(images):
        raise invalid(who, f"answers of shape {probs.shape}",
                      f"class scores [N, K] for {len(images)} images")
    return probs


def verify_watermarks(suspect: Callable[[np.ndarray], np.ndarray],
                      records: Sequence[WatermarkRecord], *, classes: int | None = None,
                      victim: Callable[[np.ndarray], np.ndarray] | None = None,
                      max_queries: int = 100, alpha: float = 0.01) -> VerifyResult:
    """Replay at most `max_queries` watermark queries against `suspect` and test them.

    `suspect`, `victim`: callables uint8 images [N, H, W, C] -> class scores [N, K]. `classes`:
    the victim's K (default: the victim's answer width, else the suspect's). A suspect with
    another K is a `UsageError` (it cannot be a copy of this victim's task).
    """
    from scipy.stats import binomtest

    if not records:
        raise invalid("watermarks", "0 records", "at least one watermark query to replay")
    if isinstance(max_queries, bool) or not isinstance(max_queries, int) or max_queries < 1:
        raise invalid("max_queries", max_queries, "a positive integer")
    if not 0.0 < alpha < 1.0:
        raise invalid("alpha", alpha, "a significance level in (0, 1)")
    chosen = sorted(records, key=lambda r: (r.time, r.digest))[:max_queries]
    images = np.stack([r.image for r in chosen]).astype(np.uint8)
    victim_probs = _predict_classes(victim, images, "victim") if victim is not None else None
    if classes is None:
        classes = victim_probs.shape[1] if victim_probs is not None else None
    suspect_probs = _predict_classes(suspect, images, "suspect")
    if classes is None:
        classes = suspect_probs.shape[1]
    if suspect_probs.shape[1] != classes:
        raise invalid("suspect", f"a model with {suspect_probs.shape[1]} classes",
                      f"a model of the victim's task ({classes} classes)")
    if classes < 3:
        raise invalid("classes", classes, "at least 3 classes (with 2 the wrong label is "
                      "determined by the true one, so agreement proves nothing)")
    top = max(max(r.label, r.true_label) for r in chosen)
    if top >= classes:
        raise invalid("watermarks", f"labels up to {top}", f"labels of a {classes}-class task")
    predicted = suspect_probs.argmax(axis=1)
    k, n = agreement(chosen, predicted)
    chance = 1.0 / (classes - 1)
    p_value = float(binomtest(k, n, chance, alternative="greater").pvalue)
    victim_k = top1 = None
    if victim_probs is not None:
        victim_k, _ = agreement(chosen, victim_probs.argmax(axis=1))
        top1 = float(np.mean(predicted == victim_probs.argmax(axis=1)))
    return VerifyResult(stolen=p_value < alpha, p_value=p_value, agreeing=k, compared=n,
                        chance=chance, alpha=float(alpha), classes=int(classes),
                        suspect_queries=n, victim_agreeing=victim_k,
                        suspect_top1_agreement=top1)


# -- the command line --------------------------------------------------------------------------

def _is_target(text: str) -> bool:
    m = _HOST_PORT.match(text)
    return bool(m) and 1 <= int(m.group(3)) <= 65535


@dataclass(frozen=True)
class VerifyConfig:
    """Replay a client's DAWN watermarks against a suspect model."""

    suspect: str = field(metadata={"help": "the suspect: HOST:PORT (served) or a SavedModel "
                                           "folder", "metavar": "HOST:PORT|PATH"})
    victim: str = field(metadata={"help": "our model: HOST:PORT (served) or a SavedModel folder",
                                  "metavar": "HOST:PORT|PATH"})
    watermarks: str = field(metadata={
        "help": "watermarks: an .npz from detector.watermark, or the gateway state "
                "(sqlite:PATH or redis://HOST:PORT/DB, with --client)", "metavar": "SOURCE"})
    client: str | None = field(default=None, metadata={
        "help": "the client whose watermarks to replay (required with a gateway state)"})
    suspect_model: str | None = field(default=None, metadata={
        "help": "model name of a served suspect"})
    victim_model: str | None = field(default=None, metadata={
        "help": "model name of a served victim"})
    api_key: str | None = field(default=None, metadata={
        "help": "API key for a served suspect behind a gateway"})
    max_queries: int = field(default=100, metadata={
        "help": "at most this many watermark queries are sent to the suspect"})
    alpha: float = field(default=0.01, metadata={
        "help": "significance level: stolen when the p-value is below it"})
    timeout: float = field(default=10.0, metadata={"help": "seconds per request to a server"})
    json_out: str | None = field(default=None, metadata={
        "help": "also write the result as JSON here", "metavar": "FILE"})

    def __post_init__(self) -> None:
        for name in ("suspect", "victim"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise invalid(name, value, "HOST:PORT or a SavedModel folder")
            if not _is_target(value) and not Path(value).is_dir():
                raise invalid(name, value, "HOST:PORT (port 1..65535) or an existing "
                              "SavedModel folder")
            model = getattr(self, f"{name}_model")
            if _is_target(value) and not model:
                raise invalid(f"{name}_model", model, f"the model name of the served {name}")
        if isinstance(self.max_queries, bool) or not isinstance(self.max_queries, int) \
                or self.max_queries < 1:
            raise invalid("max_queries", self.max_queries, "a positive integer")
        if not isinstance(self.alpha, (int, float)) or not 0.0 < self.alpha < 1.0:
            raise invalid("alpha", self.alpha, "a number in (0, 1)")
        if not isinstance(self.timeout, (int, float)) or self.timeout <= 0:
            raise invalid("timeout", self.timeout, "a positive number of seconds")
        source = self.watermarks
        if source.startswith(("sqlite:", "redis://", "rediss://", "unix://")):
            if not self.client:
                raise invalid("client", self.client,
                              "the client name whose watermarks to replay (with a gateway state)")
            if source.startswith("sqlite:") and not Path(source[len("sqlite:"):]).is_file():
                raise invalid("watermarks", source, "sqlite:PATH of an existing gateway state")
        elif not Path(source).is_file():
            raise invalid("watermarks", source, "an existing .npz, sqlite:PATH or redis://...")


def _load_records(config: VerifyConfig) -> list[WatermarkRecord]:
    source = config.watermarks
    if source.startswith(("sqlite:", "redis://", "rediss://", "unix://")):
        from serving.gateway.store import open_store

        store = open_store(source)
        try:
            records = store.watermarks(config.client)
        finally:
            store.close()
    else:
        records = load_watermarks(source)
        if config.client:
            records = [r for r in records if r.client == config.client]
    if not records:
        raise invalid("client" if config.client else "watermarks",
                      config.client or source, "a client with stored watermark queries "
                      f"in {source}")
    return records


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


def _served(target: str, model: str, who: str, config: VerifyConfig):
    import grpc

    channel = grpc.insecure_channel(target)
    try:  # a cheap reachability check before the TensorFlow-backed client is imported
        grpc.channel_ready_future(channel).result(timeout=min(config.timeout, 5.0))
    except grpc.FutureTimeoutError:
        raise invalid(who, target, f"a reachable TF Serving address (no connection within "
                      f"{min(config.timeout, 5.0):g} s)") from None
    finally:
        channel.close()
    from serving.client import ServingClient

    client = ServingClient(target, model, api_key=config.api_key if who == "suspect" else None,
                           timeout=config.timeout, retries=0)
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


def _open(config: VerifyConfig, who: str):
    where = getattr(config, who)
    if _is_target(where):
        return _served(where, getattr(config, f"{who}_model"), who, config)
    return saved_model_predict(where, who)


def run_verify(config: VerifyConfig) -> VerifyResult:
    """Load the watermarks, open both models, replay and test (see the module docstring)."""
    records = _load_records(config)
    suspect = _open(config, "suspect")
    victim = None
    try:
        victim = _open(config, "victim")
        result = verify_watermarks(suspect, records, victim=victim,
                                   max_queries=config.max_queries, alpha=config.alpha)
    finally:
        for model in (suspect, victim):
            if model is not None and hasattr(model, "close"):
                model.close()
    if config.json_out:
        from common.fileio import write_json_atomic

        write_json_atomic(config.json_out, {**asdict(result), "suspect": config.suspect,
                                            "victim": config.victim,
                                            "watermarks": config.watermarks,
                                            "client": config.client})
    return result


def _main(argv: Sequence[str] | None) -> int:
    from common.cli import configure_logging, parse_config

    config = parse_config(VerifyConfig, argv, prog=PROG, description=__doc__.split("\n\n")[0])
    configure_logging()
    result = run_verify(config)
    print(result.line())
    print(json.dumps({k: v for k, v in asdict(result).items()}, default=float))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with `argv` (default sys.argv[1:]); exit code 2 on bad input."""
    from common.cli import run_cli

    return run_cli(_main, argv, prog=PROG)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
