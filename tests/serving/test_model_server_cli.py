"""`python -m serving.model_server`: TF Serving's flags, one-line errors with exit code 2, and a
real process started with the flags a container would get, queried, and stopped with SIGTERM."""

from __future__ import annotations

import logging
import shutil
import signal

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.config import model_server_config_pb2

from common.errors import UsageError
from serving import testing
from serving.client import ServingClient
from serving.embedded import manager
from serving.embedded.manager import ModelManager
from serving.embedded.server import ModelServer, ServerOptions
from serving.model_server import build_parser, main, options_from_args
from serving.ports import check_port_free, pick_unused_port
from tests.serving.tiny_models import IMAGE_SHAPE, models_config_text


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_flags_parse_like_tensorflow_model_server(tmp_path):
    config = tmp_path / "models.config"
    config.write_text("model_config_list {}\n")
    ns = build_parser().parse_args([
        "--port=8600", "--rest_api_port=0", f"--model_config_file={config}",
        "--file_system_poll_wait_seconds=5", "--enable_batching",
        "--allow_version_labels_for_unavailable_models=false", "--grpc_max_threads", "4"])
    options = options_from_args(ns)
    assert options.port == 8600
    assert options.rest_api_port is None  # 0 turns REST off, as in TF Serving
    assert options.enable_batching is True
    assert options.allow_version_labels_for_unavailable_models is False
    assert options.file_system_poll_wait_seconds == 5.0
    assert options.grpc_max_threads == 4


@pytest.mark.parametrize("argv, fragment", [
    ([], "`model_base_path`"),
    (["--model_base_path=/no/such/dir"], "`model_base_path`. Received: model_base_path="),
    (["--model_config_file=/no/such/models.config"], "`model_config_file`"),
    (["--model_base_path=.", "--model_config_file=pyproject.toml"], "not both"),
    (["--model_base_path=.", "--port=70000"], "`port`"),
])
def test_bad_flags_one_line_exit_2(capsys, argv, fragment):
    assert main(argv) == 2
    line = one_error_line(capsys)
    assert line.startswith("python -m serving.model_server: error: ")
    assert fragment in line


def test_unparseable_config_exit_2(tmp_path, capsys):
    config = tmp_path / "models.config"
    config.write_text("model_config_list { config { nme: 'x' } }\n")
    assert main([f"--model_config_file={config}", "--port=0"]) == 2
    line = one_error_line(capsys)
    assert "`model_config_file`" in line and "parse error" in line


def test_binary_config_exit_2(tmp_path, capsys):
    config = tmp_path / "models.config"
    config.write_bytes(bytes(range(256)))
    assert main([f"--model_config_file={config}", "--port=0"]) == 2
    line = one_error_line(capsys)
    assert "`model_config_file`" in line and "can't decode" in line


def test_invalid_config_exit_2(tmp_path, capsys):
    config = tmp_path / "models.config"
    config.write_text('model_config_list { config { name: "a" base_path: "rel/a" '
                      'model_platform: "tensorflow" } }\n')
    assert main([f"--model_config_file={config}", "--port=0"]) == 2
    assert "Expected model a to have an absolute path or URI" in one_error_line(capsys)


def test_process_with_container_flags(model_base, tmp_path):
    """The server as a separate process, started as the container's command line would be,
    queried, and stopped with SIGTERM (exit code 0)."""
    base, models = model_base
    served = tmp_path / "models"
    shutil.copytree(base, served)
    config = served / "models.config"
    config.write_text(models_config_text(served))
    with testing.model_server(config_file=config, process=True, rest=True, poll_seconds=1,
                              flags=["--enable_batching=false"], log_file=tmp_path / "log",
                              env={"TF_CPP_MIN_LOG_LEVEL": "3"}) as server:
        images = np.random.default_rng(0).integers(0, 256, (3, *IMAGE_SHAPE), dtype=np.uint8)
        with ServingClient(server.target, "tiny", version=1) as client:
            got = client.predict(images)
        want = tf.nn.softmax(models[1](images.astype(np.float32))).numpy()
        np.testing.assert_allclose(got, want, atol=1e-5)
        assert server.stop(signal.SIGTERM) == 0
    assert f"Running gRPC ModelServer at 127.0.0.1:{server.port} ..." in server.log_tail()


@pytest.mark.parametrize("flag, text, expected", [
    ("batching_parameters_file", "max_batch_size { value: 64 }\nallowed_batch_sizes: 8\n"
     "allowed_batch_sizes: 48\n", "equal to max_batch_size"),
    ("batching_parameters_file", "max_batch_size: oops\n", "BatchingParameters"),
    ("monitoring_config_file", "prometheus_config { enable: true path: \"metrics\" }\n",
     "starting with '/'"),
])
def test_side_files_the_container_would_refuse_are_refused(tmp_path, capsys, flag, text,
                                                           expected):
    side = tmp_path / "side.config"
    side.write_text(text)
    code = main(["--port=0", "--model_name=m", f"--model_base_path={tmp_path}",
                 f"--{flag}={side}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert flag in err[0] and expected in err[0]


# -- issue 17, case 5: a port in use is one line and exit 2, before any model loads ------------
@pytest.fixture()
def no_model_loads(monkeypatch):
    """Fail the test if any model version starts loading."""
    def refuse(*_args, **_kwargs):
        raise AssertionError("a model was loaded although the port was taken")

    monkeypatch.setattr(manager.ModelManager, "reload", refuse)


@pytest.mark.parametrize("flag, words", [
    ("port", "Failed to start server. Error: INVALID_ARGUMENT: Failed to BuildAndStart gRPC "
             "server"),
    ("rest_api_port", "Failed to start HTTP Server at 127.0.0.1:"),
])
def test_port_in_use_one_line_exit_2(held_port, no_model_loads, tmp_path, capsys, flag, words):
    ports = {"port": 0, "rest_api_port": 0, flag: held_port}
    code = main([f"--port={ports['port']}", f"--rest_api_port={ports['rest_api_port']}",
                 "--host=127.0.0.1", "--model_name=m", f"--model_base_path={tmp_path}"])
    line = one_error_line(capsys)
    assert code == 2
    assert words in line and f"--{flag}={held_port}" in line and "in use" in line


@pytest.mark.parametrize("flag", ["port", "rest_api_port"])
def test_start_binds_before_loading(held_port, no_model_loads, tmp_path, flag):
    """The API path (no pre-check in main): ports are bound before the models load."""
    ports = {"port": 0, "rest_api_port": 0, flag: held_port}
    options = ServerOptions(model_name="m", model_base_path=str(tmp_path), host="127.0.0.1",
                            **ports)
    with pytest.raises(UsageError, match=rf"--{flag}={held_port} on 127\.0\.0\.1: .*in use"):
        ModelServer(options).start()


def test_port_check_passes_a_free_port():
    check_port_free("127.0.0.1", pick_unused_port(), "port")  # raises when the port is taken
    check_port_free("127.0.0.1", 0, "port")  # 0: any port


# -- issue 17, case 10: version folders that are not numbers: TF Serving's hint, once -----------
def test_non_numeric_version_folders_warned_once_with_hint(tmp_path, caplog):
    base = tmp_path / "m"
    (base / "export").mkdir(parents=True)
    (base / "export" / "saved_model.pb").write_bytes(b"")
    config = model_server_config_pb2.ModelServerConfig()
    entry = config.model_config_list.config.add(name="m", base_path=str(base),
                                                model_platform="tensorflow")
    assert entry.name == "m"
    manager = ModelManager()
    with caplog.at_level(logging.WARNING, logger="serving.embedded.manager"):
        manager.reload(config)
        for _ in range(3):  # the poller's next scans
            manager.poll()
    warnings = [r.getMessage() for r in caplog.records if r.name == "serving.embedded.manager"]
    assert warnings == [
        f"No versions of servable m found under base path {base}. Did you forget to name your "
        "leaf directory as a number (eg. '/1/')? (SavedModel folders named 'export': rename "
        "them to integers)"]
    caplog.clear()
    (base / "export").rename(base / "1")  # fixed: found, and a later empty spell warns again
    (base / "1" / "saved_model.pb").unlink()
    with caplog.at_level(logging.WARNING, logger="serving.embedded.manager"):
        manager.poll()
        (base / "1").rmdir()
        manager.poll()
        manager.poll()
    again = [r.getMessage() for r in caplog.records if r.name == "serving.embedded.manager"]
    assert len(again) == 1 and again[0].startswith("No versions of servable m found")
    manager.stop()
