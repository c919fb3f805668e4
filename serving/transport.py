"""What the gRPC client (`serving.client`) and the REST client (`serving.rest_client`) share.

Both query one TF Serving model and must behave alike whatever the transport: the same checks of
their arguments, one exception type (`ServingError`: target, model, RPC, gRPC status code, the
server's message), retries of UNAVAILABLE only, with exponential backoff and jitter that `close()`
interrupts, counters of requests and answered rows, images adapted to the signature (size,
channels, dtype: `adapt_images`) and batches sent with a bounded number in flight, answers kept
in order and the rest cancelled at the first failure (`BaseClient._in_batches`).
"""

from __future__ import annotations

import concurrent.futures
import logging
import random
import threading
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np

from common.constraints import check_int, check_number
from common.errors import invalid
from serving.signature import Signature, SignatureInfo, select_signature

__all__ = ["DEFAULT_BATCH_SIZE", "BaseClient", "ServingError", "adapt_images"]

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 64
"""Images per Predict request when `batch_size` is not given."""

_MAX_BACKOFF_S = 30.0
_SECONDS = "a positive number of seconds"


class ServingError(Exception):
    """A failed RPC to a TF Serving endpoint (every `grpc.RpcError` the client sees becomes one).

    Attributes: `target` (the address), `model` (the model name), `rpc` (Predict,
    GetModelMetadata, ...), `code` (a `grpc.StatusCode`) and `details` (the server's message).
    """

    def __init__(
        self, *, target: str, model: str, rpc: str, code: grpc.StatusCode, details: str
    ) -> None:
        self.target = target
        self.model = model
        self.rpc = rpc
        self.code = code
        self.details = details
        super().__init__(f"{rpc} on model '{model}' at {target} failed: {code.name}: {details}")

    def __reduce__(self):  # keep the keyword-only constructor picklable (multiprocessing, logs)
        return (
            _rebuild_serving_error,
            (self.target, self.model, self.rpc, self.code, self.details),
        )


def _rebuild_serving_error(target, model, rpc, code, details) -> ServingError:
    return ServingError(target=target, model=model, rpc=rpc, code=code, details=details)


class _Stopped(Exception):
    """Raised inside a worker when the call it belongs to has already failed."""


class BaseClient:
    """One model at one address: checked arguments, lifecycle, counters, retries, batches.

    Subclasses set `address` (what `ServingError.target` names) and implement
    `_signature_map()` (ask for the model's SignatureDefs) and `_release()` (close the
    connections).
    """

    address: str

    def __init__(self, *, model: str, version: int | None, signature: str, timeout: float,
                 max_in_flight: int, batch_size: int | None, retries: int,
                 backoff: float) -> None:
        if not isinstance(model, str) or not model or model != model.strip():
            raise invalid("model", model, "a non-empty model name")
        check_int("version", version, min=0, optional=True)
        if not isinstance(signature, str) or not signature:
            raise invalid("signature", signature, "a non-empty signature name")
        check_number("timeout", timeout, gt=0, expected=_SECONDS)
        check_int("max_in_flight", max_in_flight, min=1)
        check_int("batch_size", batch_size, min=1, optional=True)
        check_int("retries", retries, min=0)
        check_number("backoff", backoff, min=0, expected="a number of seconds >= 0")
        self.model = model
        self.version = version
        self.signature_name = signature
        self.timeout = float(timeout)
        self.max_in_flight = max_in_flight
        self.batch_size = DEFAULT_BATCH_SIZE if batch_size is None else batch_size
        self.retries = retries
        self.backoff = float(backoff)
        self.retry_codes = frozenset({grpc.StatusCode.UNAVAILABLE})
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._queries = 0
        self._requests = 0
        self._retries_done = 0
        self._signature: Signature | None = None
        self._info: SignatureInfo | None = None

    # -- the signature ------------------------------------------------------------------------
    def signature(self, *, refresh: bool = False) -> Signature:
        """The signature's inputs and outputs as the model's metadata reports them.

        Cached after the first call; `refresh=True` asks again (a new version was deployed).
        """
        with self._lock:
            if refresh:
                self._signature = self._info = None
            if self._signature is not None:
                return self._signature
        signature = select_signature(self._signature_map(), self.signature_name,
                                     where=f"model '{self.model}' at {self.address}")
        with self._lock:
            self._signature = signature
        return signature

    def _signature_map(self):
        """The model's `SignatureDefMap`, asked for through the transport."""
        raise NotImplementedError

    # -- lifecycle ----------------------------------------------------------------------------
    def __enter__(self):
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections; further calls raise RuntimeError. Idempotent."""
        if not self._closed.is_set():
            self._closed.set()
            self._release()

    def _release(self) -> None:
        """Close what the transport holds open."""

    def _check_open(self) -> None:
        if self._closed.is_set():
            raise RuntimeError(f"{self!r} is closed")

    # -- counters -----------------------------------------------------------------------------
    @property
    def queries(self) -> int:
        """Images (rows) answered by successful Predict requests."""
        with self._lock:
            return self._queries

    @property
    def requests(self) -> int:
        """Requests that succeeded (Predict, metadata and status alike)."""
        with self._lock:
            return self._requests

    @property
    def retries_done(self) -> int:
        """Retries made after a retryable failure."""
        with self._lock:
            return self._retries_done

    def _count(self, *, requests: int = 0, queries: int = 0, retries: int = 0) -> None:
        with self._lock:
            self._requests += requests
            self._queries += queries
            self._retries_done += retries

    # -- failures and retries -----------------------------------------------------------------
    def _error(self, rpc: str, code: grpc.StatusCode, details: str) -> ServingError:
        return ServingError(target=self.address, model=self.model, rpc=rpc, code=code,
                            details=details)

    def _backoff_delay(self, attempt: int) -> float:
        """Exponential backoff with 'equal jitter': half fixed, half random."""
        base = min(_MAX_BACKOFF_S, self.backoff * 2**attempt)
        return base / 2 + random.uniform(0, base / 2)

    def _wait_to_retry(self, rpc: str, code: grpc.StatusCode, attempt: int, delay: float,
                       stop: threading.Event | None = None) -> None:
        """Count and log retry `attempt` (1-based), then wait `delay` seconds; `_Stopped` (or
        RuntimeError once closed) when `stop` is set or the client is closed meanwhile."""
        self._count(retries=1)
        logger.info("%s on model '%s' at %s: %s; retry %d/%d in %.2fs", rpc, self.model,
                    self.address, code.name, attempt, self.retries, delay)
        if (stop if stop is not None else self._closed).wait(delay):
            self._check_open()
            raise _Stopped()

    # -- batches ------------------------------------------------------------------------------
    def _in_batches(self, total: int, work: Callable[[int, threading.Event], Any], *,
                    on_batch: Callable[[int, int], None] | None = None,
                    prefix: str = "serving-predict") -> list[Any]:
        """`work(first_row, stop)` for each batch of `batch_size` rows of `total`, at most
        `max_in_flight` at once; results in batch order. The first failure sets `stop` (a
        worker checks it before sending), cancels the batches not started and is raised after
        the ones in flight end. `on_batch(n_done, n_total)` follows each batch."""
        starts = list(range(0, total, self.batch_size))
        stop = threading.Event()
        results: list[Any] = [None] * len(starts)
        done = 0

        def guarded(first: int) -> Any:
            try:
                return work(first, stop)
            except BaseException:
                # set by the failing worker itself: a free worker could otherwise take the
                # next batch and send it before this thread sees the failure
                stop.set()
                raise

        executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=min(self.max_in_flight, len(starts)), thread_name_prefix=prefix)
        try:
            futures = {executor.submit(guarded, s): i for i, s in enumerate(starts)}
            for future in concurrent.futures.as_completed(futures):
                index = futures[future]
                results[index] = future.result()
                done += min(self.batch_size, total - starts[index])
                if on_batch is not None:
                    on_batch(done, total)
        finally:
            stop.set()
            executor.shutdown(wait=True, cancel_futures=True)
        return results


# -------------------------------------------------------------------------- image adaptation

_CHANNEL_MAPS = {(1, 3), (1, 4), (3, 1), (4, 1), (4, 3), (3, 4)}
_LUMA = np.array([0.2989, 0.5870, 0.1140], dtype=np.float32)  # tf.image.rgb_to_grayscale


def adapt_images(images: np.ndarray, info: SignatureInfo) -> np.ndarray:
    """Resize, convert channels and cast a batch [N, H, W, C] to what the signature takes."""
    target_dtype = info.input_dtype
    out = images
    source, target = out.shape[3], info.channels
    if target is not None and source != target:
        if source == 1:
            out = np.repeat(out, 3, axis=3)
        elif source == 4:
            out = out[..., :3]
        if target == 1:
            out = (out.astype(np.float32) @ _LUMA)[..., None]
        elif target == 4:
            alpha = np.full(out.shape[:3] + (1,), _opaque(out.dtype), dtype=out.dtype)
            out = np.concatenate([out, alpha], axis=3)
    if info.image_size is not None and tuple(out.shape[1:3]) != info.image_size:
        import tensorflow as tf  # loaded by the protos already; resize only when sizes differ

        out = tf.image.resize(
            out.astype(np.float32), info.image_size, method="bilinear", antialias=True
        ).numpy()
    if out.dtype == target_dtype:
        return np.ascontiguousarray(out)
    if np.issubdtype(target_dtype, np.integer):
        limits = np.iinfo(target_dtype)
        if np.issubdtype(out.dtype, np.floating):
            out = np.rint(out)
        out = np.clip(out, limits.min, limits.max)
    return np.ascontiguousarray(out, dtype=target_dtype)


def _opaque(dtype: np.dtype) -> int | float:
    return np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else 255.0
