"""End to end on real data: a CIFAR-10 victim trained briefly on `../shared/data`, exported,
served by the embedded server from its `models.config`, and queried through the project's
client; the answers through the wire equal the in-process model's, image for image.
Skipped with a reason when the shared data folder is absent (a user's fresh machine).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from common.data import load_dataset
from serving import testing
from serving.client import ServingClient
from victim_export import VictimConfig, read_card, run_victim_export

SHARED = Path(os.environ.get("MEXT_SHARED_DATA",
                             Path(__file__).resolve().parents[2] / ".." / "shared" / "data"))
CIFAR = SHARED / "cifar10_jpeg_q75.zip"

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not CIFAR.is_file(), reason=f"real data not found at {CIFAR}"),
]


def test_cifar10_victim_through_grpc_equals_in_process(tmp_path):
    train = load_dataset(str(CIFAR), "train", limit=2000, seed=0)
    test = load_dataset(str(CIFAR), "test", limit=300, seed=0)
    config = VictimConfig(dataset=str(CIFAR), arch="cnn", epochs=1, limit=2000, seed=0,
                          out=str(tmp_path / "victims"), name="cifar10_cnn", patience=0)
    run_victim_export(config, train=train, test=test)
    version_dir = tmp_path / "victims" / "cifar10_cnn" / "1"
    assert (version_dir / "saved_model.pb").is_file()
    local = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    want = local(images=tf.constant(test.images))["probabilities"].numpy()

    with testing.model_server(config_file=tmp_path / "victims" / "models.config") as server, \
            ServingClient(server.target, "cifar10_cnn", batch_size=64) as client:
        info = client.metadata()
        assert info.image_size == (32, 32) and info.num_classes == 10
        got = client.predict(test.images)
        assert client.queries == len(test)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert (got.argmax(1) == want.argmax(1)).all()
    # the accuracy the exporter measured in-process (model card) is the one seen through gRPC
    card = read_card(tmp_path / "victims" / "cifar10_cnn")
    assert card["versions"]["1"]["test_accuracy"] == pytest.approx(
        float((got.argmax(1) == test.labels).mean()), abs=1e-9)
