"""Parse the side files of `tensorflow_model_server` offline: batching and monitoring configs.

`--batching_parameters_file` is a text `tensorflow.serving.BatchingParameters`
(`tensorflow_serving/servables/tensorflow/session_bundle_config.proto`) and
`--monitoring_config_file` a text `tensorflow.serving.MonitoringConfig`
(`tensorflow_serving/config/monitoring_config.proto`). The `tensorflow-serving-api` wheel ships
`model_server_config_pb2` but neither of these two modules, so a typo in either file would only
show when the container starts. Where the wheel has them they are used; otherwise the two
messages are built here at run time from `descriptor_pb2` (their fields are few and stable; the
field numbers and types are those of the upstream `.proto` files), in a private descriptor pool
so they can never clash with a real module imported later.

    >>> from serving.deploy.protos import parse_batching_parameters
    >>> parse_batching_parameters("max_batch_size { value: 32 }").max_batch_size.value
    32
"""

from __future__ import annotations

import functools
import importlib
from pathlib import Path

from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    text_format,
    wrappers_pb2,
)

from common.errors import invalid

__all__ = [
    "batching_parameters_class",
    "monitoring_config_class",
    "parse_batching_parameters",
    "parse_monitoring_config",
]

_PACKAGE = "tensorflow.serving"
_F = descriptor_pb2.FieldDescriptorProto

# (name, number, label, type, type_name) exactly as in the upstream .proto files.
_BATCHING_FIELDS = (
    ("max_batch_size", 1, _F.LABEL_OPTIONAL, _F.TYPE_MESSAGE, ".google.protobuf.Int64Value"),
    ("batch_timeout_micros", 2, _F.LABEL_OPTIONAL, _F.TYPE_MESSAGE,
     ".google.protobuf.Int64Value"),
    ("max_enqueued_batches", 3, _F.LABEL_OPTIONAL, _F.TYPE_MESSAGE,
     ".google.protobuf.Int64Value"),
    ("num_batch_threads", 4, _F.LABEL_OPTIONAL, _F.TYPE_MESSAGE, ".google.protobuf.Int64Value"),
    ("thread_pool_name", 5, _F.LABEL_OPTIONAL, _F.TYPE_MESSAGE, ".google.protobuf.StringValue"),
    ("allowed_batch_sizes", 6, _F.LABEL_REPEATED, _F.TYPE_INT64, None),
    ("pad_variable_length_inputs", 7, _F.LABEL_OPTIONAL, _F.TYPE_BOOL, None),
)
_PROMETHEUS_FIELDS = (
    ("enable", 1, _F.LABEL_OPTIONAL, _F.TYPE_BOOL, None),
    ("path", 2, _F.LABEL_OPTIONAL, _F.TYPE_STRING, None),
)
_MONITORING_FIELDS = (
    ("prometheus_config", 1, _F.LABEL_OPTIONAL, _F.TYPE_MESSAGE,
     f".{_PACKAGE}.PrometheusConfig"),
)


def _add_message(file_proto, name, fields) -> None:
    message = file_proto.message_type.add(name=name)
    for field_name, number, label, field_type, type_name in fields:
        field = message.field.add(name=field_name, number=number, label=label, type=field_type,
                                  json_name=_camel(field_name))
        if type_name:
            field.type_name = type_name


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


@functools.cache
def _runtime_pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    batching = descriptor_pb2.FileDescriptorProto(
        name="mext/tensorflow_serving/session_bundle_config_subset.proto", package=_PACKAGE,
        syntax="proto3", dependency=["google/protobuf/wrappers.proto"])
    _add_message(batching, "BatchingParameters", _BATCHING_FIELDS)
    pool.Add(batching)
    monitoring = descriptor_pb2.FileDescriptorProto(
        name="mext/tensorflow_serving/monitoring_config.proto", package=_PACKAGE,
        syntax="proto3")
    _add_message(monitoring, "PrometheusConfig", _PROMETHEUS_FIELDS)
    _add_message(monitoring, "MonitoringConfig", _MONITORING_FIELDS)
    pool.Add(monitoring)
    return pool


def _message_class(module: str, name: str, *, prefer_installed: bool):
    if prefer_installed:
        try:
            return getattr(importlib.import_module(module), name)
        except ImportError:
            pass
    descriptor = _runtime_pool().FindMessageTypeByName(f"{_PACKAGE}.{name}")
    return message_factory.GetMessageClass(descriptor)


def batching_parameters_class(*, prefer_installed: bool = True):
    """The `BatchingParameters` message class (installed module first, else built here)."""
    return _message_class("tensorflow_serving.servables.tensorflow.session_bundle_config_pb2",
                          "BatchingParameters", prefer_installed=prefer_installed)


def monitoring_config_class(*, prefer_installed: bool = True):
    """The `MonitoringConfig` message class (installed module first, else built here)."""
    return _message_class("tensorflow_serving.config.monitoring_config_pb2", "MonitoringConfig",
                          prefer_installed=prefer_installed)


def _parse(text_or_path: str | Path, cls, argument: str):
    text = Path(text_or_path).read_text() if isinstance(text_or_path, Path) else text_or_path
    message = cls()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as err:
        shown = str(text_or_path) if isinstance(text_or_path, Path) else "<text>"
        raise invalid(argument, shown,
                      f"a text-format {cls.DESCRIPTOR.full_name} ({err})") from None
    return message


def parse_batching_parameters(text_or_path: str | Path):
    """Parse a `--batching_parameters_file` (a `Path` is read; a `str` is the text itself).

    Besides the syntax, checks what `tensorflow_model_server` refuses at start-up:
    `allowed_batch_sizes` increasing and ending at `max_batch_size`, at least one batch thread.
    Raises `UsageError` naming `batching_parameters_file`."""
    params = _parse(text_or_path, batching_parameters_class(), "batching_parameters_file")
    sizes = list(params.allowed_batch_sizes)
    shown = str(text_or_path) if isinstance(text_or_path, Path) else "<text>"
    if sizes:
        if sizes != sorted(set(sizes)) or sizes[0] < 1:
            raise invalid("batching_parameters_file", shown,
                          f"allowed_batch_sizes strictly increasing and positive, got {sizes}")
        if params.HasField("max_batch_size") and sizes[-1] != params.max_batch_size.value:
            raise invalid("batching_parameters_file", shown,
                          f"the last allowed_batch_sizes entry ({sizes[-1]}) equal to "
                          f"max_batch_size ({params.max_batch_size.value})")
    if params.HasField("num_batch_threads") and params.num_batch_threads.value < 1:
        raise invalid("batching_parameters_file", shown, "num_batch_threads >= 1")
    return params


def parse_monitoring_config(text_or_path: str | Path):
    """Parse a `--monitoring_config_file`; raises `UsageError` naming `monitoring_config_file`.

    An enabled Prometheus endpoint must have a path starting with '/' (or none: TF Serving's
    default, `/monitoring/prometheus/metrics`)."""
    config = _parse(text_or_path, monitoring_config_class(), "monitoring_config_file")
    path = config.prometheus_config.path
    if config.prometheus_config.enable and path and not path.startswith("/"):
        shown = str(text_or_path) if isinstance(text_or_path, Path) else "<text>"
        raise invalid("monitoring_config_file", shown,
                      f"prometheus_config.path starting with '/', got {path!r}")
    return config
