"""`serving.testing`, the harness every test and benchmark starts servers with: ready means
answering over gRPC, a server that dies early is reported with its own words, stop frees the
port."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from serving import testing
from serving.client import ServingClient


def _refused(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_in_process_server_and_gateway_are_ready_then_stopped(model_base, tmp_path):
    src, models = model_base
    images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    with testing.model_server(base_path=src / "tiny", name="tiny") as server:
        with ServingClient(server.target, "tiny") as client:  # no waiting: ready on return
            direct = client.predict(images)
        with testing.gateway(server.target, policy={"auth": {"required": False}},
                             workdir=tmp_path) as gw:
            with ServingClient(gw.target, "tiny") as client:
                np.testing.assert_array_equal(client.predict(images), direct)
        assert _refused(gw.port)
    assert _refused(server.port)
    assert server.stop() is None  # stopping twice is harmless


def test_a_process_that_exits_before_serving_is_reported_with_its_log(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(RuntimeError, match=r"exited with code 2 before serving(.|\n)*"
                                           r"model_base_path"):
        testing.model_server(base_path=missing, process=True, timeout=60)


def test_waiting_for_a_model_nobody_serves_times_out_naming_it():
    target = f"127.0.0.1:{testing.pick_unused_port()}"
    with pytest.raises(TimeoutError, match="'ghost'"):
        testing.wait_for_models(target, ["ghost"], timeout=0.5)
    with pytest.raises(TimeoutError, match="not SERVING"):
        testing.wait_for_health(target, timeout=0.5)


def test_wrong_arguments_are_refused_before_anything_starts(tmp_path):
    with pytest.raises(ValueError, match="exactly one of config_file and base_path"):
        testing.model_server()
    with pytest.raises(ValueError, match="need process=True"):
        testing.model_server(base_path=tmp_path, flags=["--enable_batching"])
    with pytest.raises(ValueError, match="state= or workdir="):
        testing.gateway("127.0.0.1:1")


def test_export_helpers_write_what_tf_serving_loads(tmp_path):
    models = []
    base = testing.export_tiny_classifier(tmp_path, "t", 3, seed=4, model_out=models)
    assert (base / "3" / "saved_model.pb").is_file() and len(models) == 1
    config = testing.export_colour_victim(tmp_path / "v")
    assert testing.models_in_config(config) == ["colours"]
    images = testing.colour_images(6, seed=0)
    assert images.dtype == np.uint8 and images.shape == (6, 16, 16, 3)
    with testing.model_server(config_file=config) as server:
        with ServingClient(server.target, "colours") as client:
            got = client.predict(images).argmax(axis=1)
    dominant = images.reshape(6, -1, 3).mean(axis=1).argmax(axis=1)
    np.testing.assert_array_equal(got, dominant)
