"""Write and update the ``models.config`` that starts TF Serving with every exported model.

The file is a text-format `tensorflow_serving.config.model_server_config_pb2.ModelServerConfig`
(the ``--model_config_file`` of ``tensorflow_model_server``), one ``model_config_list.config``
entry per model::

    model_config_list {
      config { name: "cifar10_cnn" base_path: "/models/cifar10_cnn" model_platform: "tensorflow" }
    }

It lives in the model base directory beside the model folders. By default the base path of each
entry is ``<container_base_path>/<name>`` (``/models/cifar10_cnn``), what the official container
sees when that directory is mounted at ``/models`` (``docker run -v $PWD/victims:/models
tensorflow/serving --model_config_file=/models/models.config``).
With ``container_base_path`` "" or "local" the entry holds the local absolute path instead. The
embedded model server reads the same file: a base path that does not exist locally is resolved
as ``<directory of models.config>/<name>``, so one file serves both. Updating parses the existing
file, replaces or adds this model's entry, keeps the others and writes atomically.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from common.errors import UsageError, invalid
from common.fileio import write_text_atomic

__all__ = ["MODELS_CONFIG_NAME", "model_base_path", "read_models_config", "write_models_config"]

logger = logging.getLogger(__name__)

MODELS_CONFIG_NAME = "models.config"


def model_base_path(base_dir: str | os.PathLike[str], name: str,
                    container_base_path: str = "/models") -> str:
    """The ``base_path`` of model `name`: ``<container_base_path>/<name>`` or the local path."""
    if container_base_path in ("", "local"):
        return str((Path(base_dir) / name).resolve())
    return container_base_path.rstrip("/") + "/" + name


def read_models_config(path: str | os.PathLike[str]) -> model_server_config_pb2.ModelServerConfig:
    """Parse a text-format ``models.config``; an absent file gives an empty config.

    Raises `UsageError` when the file is not a valid text `ModelServerConfig`.
    """
    path = Path(path)
    config = model_server_config_pb2.ModelServerConfig()
    if not path.exists():
        return config
    try:
        text_format.Parse(path.read_text(encoding="utf-8"), config)
    except (OSError, text_format.ParseError) as err:
        raise UsageError(
            f"Cannot parse {str(path)!r} as a text ModelServerConfig "
            f"({' '.join(str(err).split())}); fix or remove it."
        ) from err
    return config


def write_models_config(
    base_dir: str | os.PathLike[str],
    name: str,
    *,
    container_base_path: str = "/models",
    config_path: str | os.PathLike[str] | None = None,
) -> Path:
    """Add or replace model `name` in ``<base_dir>/models.config``; keep the other models.

    Args:
        base_dir: the model base directory holding ``<name>/<version>/``.
        name: the model name.
        container_base_path: the directory `base_dir` is mounted at in the TF Serving
            container; "" or "local" writes the local absolute path instead.
        config_path: the file to update; default ``<base_dir>/models.config``.

    Returns:
        The path of the written file.
    """
    if not isinstance(name, str) or not name or "/" in name:
        raise invalid("name", name, "a model name without '/'")
    path = Path(config_path) if config_path is not None else Path(base_dir) / MODELS_CONFIG_NAME
    config = read_models_config(path)
    if config.WhichOneof("config") == "custom_model_config":
        raise UsageError(
            f"{str(path)!r} holds a custom_model_config; expected a model_config_list."
        )
    base_path = model_base_path(base_dir, name, container_base_path)
    entries = config.model_config_list.config
    for entry in entries:
        if entry.name == name:
            logger.info("models.config: updating %s -> %s", name, base_path)
            break
    else:
        entry = entries.add()
        entry.name = name
        logger.info("models.config: adding %s -> %s", name, base_path)
    entry.base_path = base_path
    entry.model_platform = "tensorflow"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text_format.MessageToString(config))
    return path


