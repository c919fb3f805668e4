"""`python -m serving.model_server`: TF Serving's flags, one-line errors with exit code 2, and a
real process started with the flags a container would get, queried, and stopped with SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from serving.model_server import build_parser, main, options_from_args
from tests.serving.conftest import IMAGE_SHAPE, models_config_text

ROOT = Path(__file__).resolve().parents[2]


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


def test_invalid_config_exit_2(tmp_path, capsys):
    config = tmp_path / "models.config"
    config.write_text('model_config_list { config { name: "a" base_path: "rel/a" '
                      'model_platform: "tensorflow" } }\n')
    assert main([f"--model_config_file={config}", "--port=0"]) == 2
    assert "Expected model a to have an absolute path or URI" in one_error_line(capsys)


def test_process_with_container_flags(model_base, tmp_path):
    """The server as a separate process, started as the container's command line would be."""
    import shutil

    from serving.client import ServingClient

    base, models = model_base
    served = tmp_path / "models"
    shutil.copytree(base, served)
    config = served / "models.config"
    config.write_text(models_config_text(served))
    cmd = [sys.executable, "-m", "serving.model_server", "--port=0", "--rest_api_port=0",
           f"--model_config_file={config}", "--file_system_poll_wait_seconds=1",
           "--host=127.0.0.1", "--enable_batching=false"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    try:
        port = None
        for line in proc.stderr:
            match = re.search(r"Running gRPC ModelServer at 127\.0\.0\.1:(\d+)", line)
            if match:
                port = int(match.group(1))
                break
        assert port, "the server did not report its port"
        images = np.random.default_rng(0).integers(0, 256, (3, *IMAGE_SHAPE), dtype=np.uint8)
        with ServingClient(f"127.0.0.1:{port}", "tiny", version=1) as client:
            got = client.predict(images)
        import tensorflow as tf

        want = tf.nn.softmax(models[1](images.astype(np.float32))).numpy()
        np.testing.assert_allclose(got, want, atol=1e-5)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


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
