"""The one TensorFlow Serving gRPC client every part of the toolkit queries a victim through.

An extraction attack (Knockoff Nets, Orekondy et al. 2019; the defence of Atli et al. 2020) sees
the victim only through TF Serving's gRPC API: `PredictionService.Predict` for answers,
`GetModelMetadata` for the signature and `ModelService.GetModelStatus` for readiness.
`ServingClient` discovers the serving signature (input and output names, dtypes, shapes) instead
of hard-coding them, adapts images to it (size, channels, dtype), sends exactly the rows asked for
in batches with a bounded number of requests in flight, retries only what is safe to retry
(UNAVAILABLE, optionally RESOURCE_EXHAUSTED) with exponential backoff and jitter, and turns every
`grpc.RpcError` into one exception type, `ServingError`, naming the target, the model and the
status code. It works unchanged against the official TF Serving, the embedded model server and the
serving gateway, which all speak the same API. The signature types live in `serving.signature`,
what the REST client shares in `serving.transport`; both are importable from here as well.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import grpc
import numpy as np
from tensorflow.core.protobuf import error_codes_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from common.constraints import check_int, check_number, check_target
from common.errors import invalid
from serving import codec
from serving.signature import (
    Signature,
    SignatureInfo,
    TensorInfo,
    image_classifier,
)
from serving.transport import (
    _CHANNEL_MAPS,
    DEFAULT_BATCH_SIZE,
    BaseClient,
    ServingError,
    _Stopped,
    adapt_images,
)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "ServingClient",
    "ServingError",
    "Signature",
    "SignatureInfo",
    "TensorInfo",
    "VersionStatus",
    "adapt_images",
    "parse_target",
]

logger = logging.getLogger(__name__)

_MAX_MESSAGE_BYTES = codec.DEFAULT_MAX_BYTES
_SECONDS = "a positive number of seconds"
_HEADER_RE = re.compile(r"^[a-z0-9_.-]+$")


class VersionStatus(NamedTuple):
    """One version as GetModelStatus reports it; `error_code` is a name such as 'OK'."""

    version: int
    state: str
    error_code: str
    message: str


def _bind_first_row(on_result, first: int, names: list[str], single: bool):
    """`on_result(first_row, answer)` as a one-argument callback for the batch at `first`."""
    if on_result is None:
        return None
    return lambda decoded: on_result(first, decoded[names[0]] if single else decoded)


def parse_target(target: object) -> str:
    """Check a gRPC target string and return the form given to grpc, without connecting:
    `host:port`, `[ipv6]:port`, `dns:///host:port` or `unix:/path` (`common.constraints`'
    `check_target`). Raises `UsageError` naming `target` otherwise."""
    return check_target("target", target)


class ServingClient(BaseClient):
    """A TF Serving gRPC client for one model (thread-safe; one channel, reused).

    Example::

        with ServingClient("localhost:8500", "cifar10_cnn") as client:
            info = client.metadata()               # discovered signature
            probs = client.predict(images)         # [N, K] float32, rows in order

    Args:
        target: `host:port`, `[::1]:port` or `unix:/path`.
        model: the model name in the server's model config.
        version, version_label: pin a version (at most one of them); latest otherwise.
        signature: the signature to call.
        output: the output holding probabilities when the signature has several rank-2 outputs
            and none named `probabilities`.
        api_key: sent with every RPC in `api_key_header` (`authorization` sends `Bearer <key>`).
        timeout: the deadline of each RPC, in seconds.
        max_in_flight: Predict requests outstanding at once.
        batch_size: images per Predict request (default `DEFAULT_BATCH_SIZE`).
        retries: retries of an RPC that failed with a retryable code (UNAVAILABLE, plus
            RESOURCE_EXHAUSTED when `retry_resource_exhausted`).
        backoff: first backoff delay in seconds; doubles each retry, with jitter.
        max_message_bytes: largest gRPC message sent or received.
        credentials: TLS channel credentials; plaintext when None.
    """

    def __init__(
        self,
        target: str,
        model: str,
        *,
        version: int | None = None,
        version_label: str | None = None,
        signature: str = "serving_default",
        output: str | None = None,
        api_key: str | None = None,
        api_key_header: str = "x-api-key",
        timeout: float = 30.0,
        max_in_flight: int = 4,
        batch_size: int | None = None,
        retries: int = 5,
        backoff: float = 0.2,
        retry_resource_exhausted: bool = False,
        max_message_bytes: int = _MAX_MESSAGE_BYTES,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.target = self.address = parse_target(target)
        if version_label is not None and (not isinstance(version_label, str) or not version_label):
            raise invalid("version_label", version_label, "a non-empty string or None")
        if version is not None and version_label is not None:
            raise invalid("version_label", version_label, "None when `version` is given")
        if output is not None and (not isinstance(output, str) or not output):
            raise invalid("output", output, "a non-empty output name or None")
        if api_key is not None and (
            not isinstance(api_key, str) or not api_key or not api_key.isascii()
            or not api_key.isprintable() or api_key != api_key.strip()
        ):
            raise invalid("api_key", "<hidden>", "a non-empty printable ASCII string or None")
        if (
            not isinstance(api_key_header, str) or not _HEADER_RE.match(api_key_header)
            or api_key_header.endswith("-bin") or api_key_header.startswith("grpc-")
        ):
            raise invalid(
                "api_key_header", api_key_header,
                "a lower-case gRPC metadata key such as 'x-api-key' or 'authorization'",
            )
        check_int("max_message_bytes", max_message_bytes, min=1, max=_MAX_MESSAGE_BYTES)
        if credentials is not None and not isinstance(credentials, grpc.ChannelCredentials):
            raise invalid("credentials", credentials, "grpc.ChannelCredentials or None")
        super().__init__(model=model, version=version, signature=signature, timeout=timeout,
                         max_in_flight=max_in_flight, batch_size=batch_size, retries=retries,
                         backoff=backoff)
        self.version_label = version_label
        self.output = output
        self.max_message_bytes = max_message_bytes
        if retry_resource_exhausted:
            self.retry_codes = self.retry_codes | {grpc.StatusCode.RESOURCE_EXHAUSTED}
        self._metadata: tuple[tuple[str, str], ...] = ()
        if api_key is not None:
            value = f"Bearer {api_key}" if api_key_header == "authorization" else api_key
            self._metadata = ((api_key_header, value),)

        options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            # Pings no more often than TF Serving's default minimum interval, so a long Predict
            # is never cut with GOAWAY "too_many_pings"; a dead peer is noticed within minutes.
            ("grpc.keepalive_time_ms", 300_000),
            ("grpc.keepalive_timeout_ms", 20_000),
            ("grpc.keepalive_permit_without_calls", 0),
        ]
        if credentials is None:
            self._channel = grpc.insecure_channel(self.target, options=options)
        else:
            self._channel = grpc.secure_channel(self.target, credentials, options=options)
        self._predict_stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._model_stub = model_service_pb2_grpc.ModelServiceStub(self._channel)

    def _release(self) -> None:
        self._channel.close()

    def __repr__(self) -> str:
        return f"ServingClient(target={self.target!r}, model={self.model!r})"

    # ------------------------------------------------------------------------------ metadata

    def model_spec(self) -> model_pb2.ModelSpec:
        """The ModelSpec every request of this client carries (a fresh copy)."""
        spec = model_pb2.ModelSpec(name=self.model, signature_name=self.signature_name)
        if self.version is not None:
            spec.version.value = self.version
        if self.version_label is not None:
            spec.version_label = self.version_label
        return spec

    def _signature_map(self) -> get_model_metadata_pb2.SignatureDefMap:
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=self.model_spec(), metadata_field=["signature_def"]
        )
        response = self._call("GetModelMetadata", self._predict_stub.GetModelMetadata, request)
        if "signature_def" not in response.metadata:
            raise self._error(
                "GetModelMetadata", grpc.StatusCode.INTERNAL,
                "malformed response: no 'signature_def' metadata",
            )
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        if not response.metadata["signature_def"].Unpack(signature_map):
            raise self._error(
                "GetModelMetadata", grpc.StatusCode.INTERNAL,
                "malformed response: 'signature_def' is not a SignatureDefMap",
            )
        return signature_map

    def metadata(self, *, refresh: bool = False) -> SignatureInfo:
        """The image-classifier view of the signature (cached; `refresh=True` asks again).

        Raises `UsageError` naming `signature` when it is not an image classifier (no single
        rank-4 input, no probabilities output) and naming `output` when the probabilities output
        is ambiguous or the one given does not exist.
        """
        with self._lock:
            if self._info is not None and not refresh:
                return self._info
        info = image_classifier(self.signature(refresh=refresh), output=self.output,
                                where=f"model '{self.model}' at {self.target}")
        with self._lock:
            self._info = info
        return info

    # ---------------------------------------------------------------------------- model status

    def model_status(self) -> list[VersionStatus]:
        """GetModelStatus: one `VersionStatus(version, state, error_code, message)` per version."""
        request = get_model_status_pb2.GetModelStatusRequest(model_spec=self.model_spec())
        response = self._call("GetModelStatus", self._model_stub.GetModelStatus, request)
        return [_version_status(v) for v in response.model_version_status]

    def wait_until_available(self, timeout: float = 60.0, *, poll: float = 0.5) -> int:
        """Poll GetModelStatus until a version is AVAILABLE; return that version.

        UNAVAILABLE (server starting) and NOT_FOUND (model not loaded yet) are waited through.
        Raises `ServingError` with DEADLINE_EXCEEDED when `timeout` passes, and at once with the
        load error when every version reported has ended with an error.
        """
        check_number("timeout", timeout, gt=0, expected=_SECONDS)
        check_number("poll", poll, gt=0, expected=_SECONDS)
        give_up = time.monotonic() + timeout
        last, answered = "no answer yet", False
        request = get_model_status_pb2.GetModelStatusRequest(model_spec=self.model_spec())
        while True:
            self._check_open()
            remaining = give_up - time.monotonic()
            try:
                response = self._model_stub.GetModelStatus(
                    request, timeout=max(0.01, min(self.timeout, remaining)),
                    metadata=self._metadata,
                )
            except grpc.RpcError as err:
                code, details = _code_details(err)
                if code not in (
                    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                ):
                    raise self._error("GetModelStatus", code, details) from err
                if code != grpc.StatusCode.DEADLINE_EXCEEDED or not answered:
                    # our own poll running out says nothing new about a model that answered
                    last = f"{code.name}: {details}"
            else:
                self._count(requests=1)
                answered = True
                statuses = [_version_status(v) for v in response.model_version_status]
                available = [s.version for s in statuses if s.state == "AVAILABLE"]
                if available:
                    return max(available)
                failed = [s for s in statuses if s.state == "END" and s.error_code != "OK"]
                if statuses and len(failed) == len(statuses):
                    code = getattr(grpc.StatusCode, failed[0].error_code, grpc.StatusCode.UNKNOWN)
                    raise self._error("GetModelStatus", code, failed[0].message)
                last = ", ".join(f"version {s.version} {s.state}" for s in statuses) or "none"
            if time.monotonic() + poll > give_up:
                raise self._error(
                    "GetModelStatus", grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"no version AVAILABLE after {timeout:g}s (last: {last})",
                )
            if self._closed.wait(poll):
                self._check_open()

    # --------------------------------------------------------------------------------- predict

    def predict(
        self,
        images: Any,
        *,
        outputs: str | Sequence[str] | None = None,
        deadline: float | None = None,
        on_batch: Callable[[int, int], None] | None = None,
        on_result: Callable[[int, np.ndarray | dict[str, np.ndarray]], None] | None = None,
        on_send: Callable[[int, int], None] | None = None,
    ) -> np.ndarray | dict[str, np.ndarray]:
        """Classify `images` ([N, H, W, C], any numeric dtype and size); rows come back in order.

        Images are adapted to the signature: resized (bilinear, antialiased) when it fixes H and
        W and they differ, channels converted (gray <-> RGB, alpha dropped), cast to the input
        dtype (integers: rounded and clipped; floats: values kept, 0..255 stays 0..255). Exactly
        N rows are sent, in batches of `batch_size` with at most `max_in_flight` outstanding.

        Args:
            outputs: None for the probabilities output as an array; an output name for that
                output as an array; a sequence of names for a dict of arrays.
            deadline: overall seconds for the whole call (each RPC still has `timeout`).
            on_batch: called as `on_batch(n_done, n_total)` (in images) after each batch.
            on_result: called as `on_result(first_row, answer)` with each batch's answer (same
                form as the return value) as soon as it arrives, from the worker thread that
                received it (make it thread-safe), so a caller can journal every answer even
                when the call is interrupted (Ctrl-C, a failed batch) before it returns.
            on_send: called as `on_send(first_row, n_rows)` from the worker thread just before
                a batch is sent (once, not again on retries), so a caller can journal the intent
                of exactly what goes on the wire.

        Raises:
            UsageError: bad `images`, `outputs` or `deadline` (before anything is sent).
            ServingError: an RPC failed (after retries) or the overall deadline passed.
        """
        self._check_open()
        check_number("deadline", deadline, gt=0, optional=True, expected=f"{_SECONDS} or None")
        deadline_at = None if deadline is None else time.monotonic() + deadline
        info = self.metadata()
        names, single = self._output_names(info, outputs)
        images = self._check_images(images, info)

        total = int(images.shape[0])
        if total == 0:
            empty = {n: _empty_output(info.output(n)) for n in names}
            return empty[names[0]] if single else empty

        def work(first: int, stop: threading.Event) -> dict[str, np.ndarray]:
            return self._predict_batch(
                images[first : first + self.batch_size], info, names, deadline_at, stop,
                _bind_first_row(on_result, first, names, single),
                None if on_send is None else functools.partial(on_send, first))

        results = self._in_batches(total, work, on_batch=on_batch)
        merged = {n: np.concatenate([r[n] for r in results], axis=0) for n in names}
        return merged[names[0]] if single else merged

    def _output_names(
        self, info: SignatureInfo, outputs: str | Sequence[str] | None
    ) -> tuple[list[str], bool]:
        if outputs is None:
            return [info.probabilities], True
        single = isinstance(outputs, str)
        names = [outputs] if single else list(outputs) if _is_str_sequence(outputs) else None
        if not names or any(n not in info.output_names for n in names) or len(set(names)) != len(
            names
        ):
            raise invalid(
                "outputs", outputs,
                f"None, an output name or distinct output names among {list(info.output_names)}",
            )
        return names, single

    def _check_images(self, images: Any, info: SignatureInfo) -> np.ndarray:
        try:
            array = np.asarray(images)
        except (TypeError, ValueError) as err:
            raise invalid("images", type(images).__name__, "a numeric array [N, H, W, C]") from err
        if array.dtype == bool or not (
            np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
        ):
            raise invalid("images", f"array of dtype {array.dtype}", "a numeric array [N,H,W,C]")
        if array.ndim != 4 or min(array.shape[1:]) < 1:
            raise invalid("images", f"array of shape {array.shape}", "an array [N, H, W, C]")
        source, target = array.shape[3], info.channels
        if target is not None and source != target and (source, target) not in _CHANNEL_MAPS:
            raise invalid(
                "images", f"array of shape {array.shape}",
                f"{target} channels (or 1, 3 or 4 channels to convert) for input "
                f"'{info.input_name}' of model '{self.model}'",
            )
        if np.issubdtype(info.input_dtype, np.integer) and np.issubdtype(array.dtype, np.floating):
            if not np.isfinite(array).all():
                raise invalid("images", "an array with NaN or infinite values", "finite values")
            if info.input_dtype == np.uint8 and array.size and float(array.max()) <= 1.0:
                logger.warning(
                    "Float images in [0, 1] are sent to uint8 input '%s' of model '%s': values "
                    "are rounded to 0..1, not scaled; pass pixels in 0..255.",
                    info.input_name, self.model,
                )
        return array

    def _predict_batch(
        self,
        batch: np.ndarray,
        info: SignatureInfo,
        names: list[str],
        deadline_at: float | None,
        stop: threading.Event,
        on_result: Callable[[dict[str, np.ndarray]], None] | None = None,
        on_send: Callable[[int], None] | None = None,
    ) -> dict[str, np.ndarray]:
        if stop.is_set():
            raise _Stopped()
        if on_send is not None:
            on_send(len(batch))
        request = predict_pb2.PredictRequest(model_spec=self.model_spec())
        request.inputs[info.input_name].CopyFrom(
            codec.from_ndarray(adapt_images(batch, info), use_tensor_content=True)
        )
        request.output_filter.extend(names)
        response = self._call(
            "Predict", self._predict_stub.Predict, request,
            deadline_at=deadline_at, stop=stop, rows=len(batch),
        )
        decoded = self._decode_outputs(response, names, rows=len(batch))
        if on_result is not None:
            on_result(decoded)
        return decoded

    def _decode_outputs(
        self, response: predict_pb2.PredictResponse, names: Sequence[str], rows: int | None
    ) -> dict[str, np.ndarray]:
        decoded = {}
        for name in names:
            if name not in response.outputs:
                raise self._error(
                    "Predict", grpc.StatusCode.INTERNAL,
                    f"malformed response: no output '{name}' (got {sorted(response.outputs)})",
                )
            try:
                array = codec.to_ndarray(response.outputs[name], max_bytes=self.max_message_bytes)
            except codec.TensorDecodeError as err:
                raise self._error(
                    "Predict", grpc.StatusCode.INTERNAL,
                    f"malformed response: output '{name}': {err}",
                ) from err
            if rows is not None and (array.ndim == 0 or array.shape[0] != rows):
                raise self._error(
                    "Predict", grpc.StatusCode.INTERNAL,
                    f"malformed response: output '{name}' has shape {array.shape} for {rows} "
                    "rows sent",
                )
            decoded[name] = array
        return decoded

    def predict_raw(
        self,
        inputs: Mapping[str, Any],
        output_filter: Sequence[str] | None = None,
        *,
        deadline: float | None = None,
    ) -> dict[str, np.ndarray]:
        """One Predict with the inputs exactly as given, for any signature (no adaptation).

        Input names must be the signature's; `output_filter` (output names) restricts the
        outputs returned, all outputs otherwise. Counts the leading dimension of the first input
        as queries.
        """
        self._check_open()
        check_number("deadline", deadline, gt=0, optional=True, expected=f"{_SECONDS} or None")
        deadline_at = None if deadline is None else time.monotonic() + deadline
        sig = self.signature()
        if not isinstance(inputs, Mapping) or not inputs or any(k not in sig.inputs
                                                                for k in inputs):
            received = sorted(inputs) if isinstance(inputs, Mapping) else type(inputs).__name__
            raise invalid("inputs", received, f"a dict keyed by input names among "
                                              f"{sorted(sig.inputs)}")
        missing = sorted(k for k in sig.inputs if k not in inputs and k not in sig.defaults)
        if missing:
            raise invalid("inputs", sorted(inputs), f"every required input, missing {missing}")
        if output_filter is not None and (
            not _is_str_sequence(output_filter) or not output_filter
            or any(n not in sig.outputs for n in output_filter)
        ):
            raise invalid("output_filter", output_filter,
                          f"None or output names among {sorted(sig.outputs)}")
        arrays = {k: np.asarray(v) for k, v in inputs.items()}
        request = predict_pb2.PredictRequest(model_spec=self.model_spec())
        for name, array in arrays.items():
            try:
                proto = codec.from_ndarray(array, dtype=sig.inputs[name].dtype)
            except (TypeError, ValueError) as err:
                raise invalid(f"inputs[{name!r}]", f"array of dtype {array.dtype}",
                              f"values convertible to {sig.inputs[name].dtype}") from err
            request.inputs[name].CopyFrom(proto)
        names = list(output_filter) if output_filter is not None else list(sig.outputs)
        request.output_filter.extend(output_filter or [])
        first = next(iter(arrays.values()))
        rows = int(first.shape[0]) if first.ndim else 1
        response = self._call("Predict", self._predict_stub.Predict, request,
                              deadline_at=deadline_at, rows=rows)
        decoded = self._decode_outputs(response, names, rows=None)
        return {k: v if v.flags.writeable else v.copy() for k, v in decoded.items()}

    # ----------------------------------------------------------------------------- plumbing

    def _call(
        self,
        rpc: str,
        method: Callable[..., Any],
        request: Any,
        *,
        deadline_at: float | None = None,
        stop: threading.Event | None = None,
        rows: int = 0,
    ) -> Any:
        """One unary RPC with the per-RPC timeout, the overall deadline and safe retries."""
        attempt = 0
        while True:
            self._check_open()
            timeout = self.timeout
            if deadline_at is not None:
                remaining = deadline_at - time.monotonic()
                if remaining <= 0:
                    raise self._error(rpc, grpc.StatusCode.DEADLINE_EXCEEDED,
                                      "overall deadline of the call exceeded")
                timeout = min(timeout, remaining)
            try:
                response = method(request, timeout=timeout, metadata=self._metadata)
            except grpc.RpcError as err:
                code, details = _code_details(err)
                if code not in self.retry_codes or attempt >= self.retries:
                    raise self._error(rpc, code, details) from err
                delay = self._backoff_delay(attempt)
                if deadline_at is not None and time.monotonic() + delay >= deadline_at:
                    raise self._error(rpc, code, details) from err
                attempt += 1
                self._wait_to_retry(rpc, code, attempt, delay, stop)
                continue
            except ValueError:  # grpc raises it for a channel closed under the call
                self._check_open()
                raise
            self._count(requests=1, queries=rows)
            return response


# ------------------------------------------------------------------------------------ helpers

def _empty_output(info: TensorInfo) -> np.ndarray:
    tail = () if info.shape is None else tuple(d or 0 for d in info.shape[1:])
    return np.empty((0, *tail), dtype=info.dtype)


def _version_status(status: get_model_status_pb2.ModelVersionStatus) -> VersionStatus:
    state = get_model_status_pb2.ModelVersionStatus.State.Name(status.state)
    try:
        error_code = error_codes_pb2.Code.Name(status.status.error_code)
    except ValueError:
        error_code = str(status.status.error_code)
    return VersionStatus(int(status.version), state, error_code, status.status.error_message)


def _code_details(err: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    code = err.code() if callable(getattr(err, "code", None)) else None
    details = err.details() if callable(getattr(err, "details", None)) else None
    return code or grpc.StatusCode.UNKNOWN, details or str(err)


def _is_str_sequence(value: object) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str) and all(
        isinstance(v, str) for v in value
    )

