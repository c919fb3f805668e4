"""Tests of models.config: a text ModelServerConfig that is updated, never clobbered."""

from __future__ import annotations

import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from common.errors import UsageError
from victim_export.models_config import (
    model_base_path,
    read_models_config,
    write_models_config,
)


def _parse(path):
    config = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(path.read_text(), config)
    return {c.name: (c.base_path, c.model_platform) for c in config.model_config_list.config}


def test_writes_a_text_model_server_config(tmp_path):
    path = write_models_config(tmp_path, "cifar10_cnn")
    assert path == tmp_path / "models.config"
    assert _parse(path) == {"cifar10_cnn": ("/models/cifar10_cnn", "tensorflow")}


def test_update_replaces_this_model_and_keeps_the_others(tmp_path):
    write_models_config(tmp_path, "a")
    write_models_config(tmp_path, "b", container_base_path="/srv/models/")
    write_models_config(tmp_path, "a", container_base_path="local")
    entries = _parse(tmp_path / "models.config")
    assert entries == {
        "a": (str((tmp_path / "a").resolve()), "tensorflow"),
        "b": ("/srv/models/b", "tensorflow"),
    }
    assert [c.name for c in read_models_config(tmp_path / "models.config")
            .model_config_list.config] == ["a", "b"]
    assert [p.name for p in tmp_path.iterdir()] == ["models.config"]  # no temp files left


def test_keeps_entries_written_by_hand(tmp_path):
    (tmp_path / "models.config").write_text(
        'model_config_list { config { name: "resnet" base_path: "/models/resnet" '
        'model_platform: "tensorflow" model_version_policy { all {} } } }'
    )
    write_models_config(tmp_path, "cnn")
    config = read_models_config(tmp_path / "models.config")
    resnet, cnn = config.model_config_list.config
    assert resnet.name == "resnet" and resnet.model_version_policy.HasField("all")
    assert cnn.base_path == "/models/cnn"


def test_base_path_forms(tmp_path):
    assert model_base_path(tmp_path, "m") == "/models/m"
    assert model_base_path(tmp_path, "m", "gs://bucket/models") == "gs://bucket/models/m"
    assert model_base_path(tmp_path, "m", "") == str((tmp_path / "m").resolve())


@pytest.mark.parametrize(
    "content, match",
    [
        ("model_config_list { config { nam: 'x' } }", "Cannot parse"),
        ("custom_model_config { }", "custom_model_config"),
    ],
)
def test_unusable_existing_files_are_usage_errors_and_left_alone(tmp_path, content, match):
    (tmp_path / "models.config").write_text(content)
    with pytest.raises(UsageError, match=match):
        write_models_config(tmp_path, "m")
    assert (tmp_path / "models.config").read_text() == content
