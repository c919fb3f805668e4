"""Tests of the backbone registry: preprocessing pairing, builds, weights, serialization."""

from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import applications as apps

from common.backbones import (
    BackbonePreprocess,
    backbone_names,
    build_classifier,
    get_backbone,
)
from common.errors import UsageError

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("MEXT_SHARED_DATA", REPO_ROOT / ".." / "shared" / "data"))
MOBILENET_WEIGHTS = SHARED_DATA / "mobilenet_2_5_224_tf_no_top.h5"

REQUIRED = [
    "cnn", "resnet34", "ResNet50", "ResNet101", "MobileNet", "MobileNetV2", "MobileNetV3Small",
    "MobileNetV3Large", "EfficientNetB0", "EfficientNetB1", "EfficientNetB2", "EfficientNetB3",
    "DenseNet121", "VGG16", "InceptionV3", "Xception", "ConvNeXtTiny",
]

# name -> (its Keras module's preprocess_input, expected mapping of raw pixels, default size)
PAIRING = {
    "ResNet50": (apps.resnet.preprocess_input, "caffe", 224),
    "ResNet101": (apps.resnet.preprocess_input, "caffe", 224),
    "ResNet50V2": (apps.resnet_v2.preprocess_input, "tf", 224),
    "MobileNet": (apps.mobilenet.preprocess_input, "tf", 224),
    "MobileNetV2": (apps.mobilenet_v2.preprocess_input, "tf", 224),
    "MobileNetV3Small": (apps.mobilenet_v3.preprocess_input, "identity", 224),
    "MobileNetV3Large": (apps.mobilenet_v3.preprocess_input, "identity", 224),
    "EfficientNetB0": (apps.efficientnet.preprocess_input, "identity", 224),
    "EfficientNetB1": (apps.efficientnet.preprocess_input, "identity", 240),
    "EfficientNetB2": (apps.efficientnet.preprocess_input, "identity", 260),
    "EfficientNetB3": (apps.efficientnet.preprocess_input, "identity", 300),
    "EfficientNetV2B0": (apps.efficientnet_v2.preprocess_input, "identity", 224),
    "DenseNet121": (apps.densenet.preprocess_input, "torch", 224),
    "VGG16": (apps.vgg16.preprocess_input, "caffe", 224),
    "InceptionV3": (apps.inception_v3.preprocess_input, "tf", 299),
    "Xception": (apps.xception.preprocess_input, "tf", 299),
    "ConvNeXtTiny": (apps.convnext.preprocess_input, "identity", 224),
    "cnn": (None, "tf", 32),
    "resnet34": (None, "torch", 224),
}

MEAN_RGB = np.array([123.68, 116.779, 103.939], np.float32)  # caffe mode, pixel units
TORCH_MEAN = np.array([0.485, 0.456, 0.406], np.float32)  # torch mode, unit range
TORCH_STD = np.array([0.229, 0.224, 0.225], np.float32)


def _expected(mode: str, x: np.ndarray) -> np.ndarray:
    if mode == "identity":
        return x
    if mode == "tf":
        return x / 127.5 - 1.0
    if mode == "torch":
        return (x / 255.0 - TORCH_MEAN) / TORCH_STD
    return x[..., ::-1] - MEAN_RGB[::-1]  # caffe: RGB -> BGR, minus the ImageNet mean


def _pixels(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, shape).astype(np.float32)


def test_registry_holds_the_required_backbones_and_is_case_insensitive():
    names = backbone_names()
    assert set(REQUIRED) <= set(names)
    assert len(names) == len({n.lower() for n in names})
    assert get_backbone("mobilenet") is get_backbone("MobileNet") is get_backbone(" MOBILENET ")
    assert get_backbone("RESNET34").name == "resnet34"


def test_unknown_name_is_a_usage_error_listing_the_known_names():
    with pytest.raises(UsageError, match=r"argument `arch`.*'nosuchnet'.*ResNet50.*Xception"):
        get_backbone("nosuchnet", argument="arch")
    with pytest.raises(UsageError, match="argument `backbone`"):
        get_backbone(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(PAIRING))
def test_each_backbone_is_paired_with_its_own_preprocessing(name):
    function, mode, default_size = PAIRING[name]
    entry = get_backbone(name)
    if function is not None:
        assert entry.preprocess_input is function
    assert entry.default_size == default_size
    x = _pixels((2, 4, 4, 3))
    before = x.copy()
    np.testing.assert_allclose(entry.preprocess(x), _expected(mode, before), rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(x, before)  # the caller's array is never modified


def test_every_registered_backbone_has_a_pairing_and_sane_sizes():
    for name in backbone_names():
        entry = get_backbone(name)
        assert callable(entry.preprocess_input) and callable(entry.constructor)
        assert 8 <= entry.min_size <= entry.default_size
        assert entry.pretrained == (name not in ("cnn", "resnet34"))
    assert get_backbone("InceptionV3").min_size == 75
    assert get_backbone("Xception").min_size == 71
    assert get_backbone("MobileNet").min_size == 32


@pytest.mark.parametrize(
    "name, size, kwargs",
    [
        ("cnn", 16, {}),
        ("resnet34", 16, {"width": 2}),
        ("MobileNet", 32, {"alpha": 0.25}),
        ("MobileNetV3Small", 32, {"alpha": 0.75, "minimalistic": True}),
    ],
)
def test_build_classifier_maps_raw_pixels_to_logits(name, size, kwargs):
    model = build_classifier(name, 5, input_size=size, **kwargs)
    assert model.input_shape == (None, size, size, 3)
    assert model.inputs[0].dtype == "float32"
    assert model.output_shape == (None, 5)
    layer = model.get_layer(f"{name.lower()}_preprocess")
    assert isinstance(layer, BackbonePreprocess) and layer.backbone == get_backbone(name).name
    x = _pixels((2, size, size, 3))
    logits = np.asarray(model(x, training=False))
    # The model is exactly: preprocess -> headless backbone -> dense logits.
    entry = get_backbone(name)
    backbone = next(lay for lay in model.layers if isinstance(lay, keras.Model))
    features = backbone(entry.preprocess(x), training=False)
    manual = model.get_layer("logits")(features)
    np.testing.assert_allclose(logits, np.asarray(manual), rtol=1e-4, atol=1e-4)


def test_preprocess_layer_survives_a_keras_save_and_load(tmp_path):
    model = build_classifier("mobilenet", 3, input_size=32, alpha=0.25, dropout=0.2)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # no custom_objects: the layer is registered
    layer = loaded.get_layer("mobilenet_preprocess")
    assert isinstance(layer, BackbonePreprocess)
    assert layer.get_config()["backbone"] == "MobileNet"
    x = _pixels((3, 32, 32, 3), seed=1)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), rtol=1e-5, atol=1e-5)


def test_resnet34_has_basic_blocks_and_picks_its_stem_by_size():
    small = get_backbone("resnet34").build((32, 32, 3), "none", width=2)
    big = get_backbone("resnet34").build((96, 96, 3), "none", width=2)
    for model in (small, big):
        assert sum(isinstance(lay, keras.layers.Add) for lay in model.layers) == 3 + 4 + 6 + 3
        assert model.output_shape == (None, 16)
    names_small = {lay.name for lay in small.layers}
    names_big = {lay.name for lay in big.layers}
    assert "stem_pool" not in names_small and "stem_pool" in names_big
    assert small.get_layer("stem_conv").kernel_size == (3, 3)
    assert big.get_layer("stem_conv").kernel_size == (7, 7)
    forced = get_backbone("resnet34").build((32, 32, 3), "none", width=2, stem="imagenet")
    assert "stem_pool" in {lay.name for lay in forced.layers}
    with pytest.raises(UsageError, match="stem"):
        get_backbone("resnet34").build((32, 32, 3), "none", stem="tiny")


def test_weights_file_round_trip_for_a_network_built_here(tmp_path):
    first = get_backbone("cnn").build((16, 16, 3), "none", filters=(4, 8), block_dropout=(0, 0),
                                      dense_units=8)
    path = tmp_path / "cnn.weights.h5"
    first.save_weights(path)
    second = get_backbone("cnn").build((16, 16, 3), str(path), filters=(4, 8),
                                       block_dropout=(0, 0), dense_units=8)
    x = _pixels((2, 16, 16, 3))
    np.testing.assert_allclose(np.asarray(second(x)), np.asarray(first(x)), atol=1e-6)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: build_classifier("cnn", 1), "num_classes"),
        (lambda: build_classifier("cnn", 3, input_size=4), "input_size"),
        (lambda: build_classifier("InceptionV3", 3, input_size=64), "at least 75"),
        (lambda: build_classifier("cnn", 3, dropout=1.0), "dropout"),
        (lambda: build_classifier("cnn", 3, input_size=16, weights="/no/such.h5"), "weights"),
        (lambda: build_classifier("resnet34", 3, input_size=16, weights="imagenet"),
         "no ImageNet weights"),
        (lambda: build_classifier("cnn", 3, input_size=16, colour=True), "keyword argument"),
        (lambda: get_backbone("cnn").build((16, 16, 1), "none"), "input_shape"),
    ],
)
def test_bad_arguments_are_usage_errors(call, match):
    with pytest.raises(UsageError, match=match):
        call()


def test_imagenet_download_failure_becomes_one_usage_error_line(monkeypatch):
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/x.h5: None -- "
                        "[Errno -2] Name or service not known")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(UsageError) as info:
        build_classifier("MobileNet", 3, input_size=32, alpha=0.25, weights="imagenet")
    message = str(info.value)
    assert "\n" not in message
    assert "URL fetch failure" in message and "weights=PATH" in message


needs_weights = pytest.mark.skipif(
    not MOBILENET_WEIGHTS.is_file(), reason=f"real weights absent: {MOBILENET_WEIGHTS}"
)


@pytest.mark.realdata
@needs_weights
def test_real_imagenet_mobilenet_weights_load_from_a_file():
    entry = get_backbone("mobilenet")
    pretrained = entry.build((96, 96, 3), str(MOBILENET_WEIGHTS), alpha=0.25)
    assert pretrained.count_params() == 218_544
    again = entry.build((96, 96, 3), str(MOBILENET_WEIGHTS), alpha=0.25)
    x = entry.preprocess(_pixels((2, 96, 96, 3)))
    np.testing.assert_allclose(np.asarray(again(x)), np.asarray(pretrained(x)), atol=1e-5)
    random = entry.build((96, 96, 3), "none", alpha=0.25)
    assert not np.allclose(np.asarray(random(x)), np.asarray(pretrained(x)), atol=1e-3)


@pytest.mark.realdata
@needs_weights
def test_weights_file_of_another_architecture_is_a_usage_error():
    with pytest.raises(UsageError, match="MobileNet"):
        build_classifier("MobileNet", 3, input_size=96, weights=str(MOBILENET_WEIGHTS))
