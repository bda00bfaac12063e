"""keras-hub: timm presets, our own presets, the image converter, fine-tuning.

timm-layout presets (`config.json` + `model.safetensors`) are written from
the fixtures' reduced models: timm's `model_args` give their widths, and the
pseudo-random weights of `tests/reference/reference_weights.py` their
tensors. Logits must equal timm's saved outputs.
"""

import json
import os
import subprocess
import sys

import keras
import keras_hub
import numpy as np
import pytest
from conftest import FIRST_SIZES
from conftest import TIMM_KEYS
from conftest import fixture_path
from hub_server import HubServer
from hub_server import timm_url_path
from numpy_reference import pil_eval_transform
from reference_weights import reference_weights
from safetensors.numpy import save
from skimage import data as skimage_data

from keras_metaformer.hub import MetaFormerBackbone
from keras_metaformer.hub import MetaFormerImageClassifier
from keras_metaformer.hub import MetaFormerImageClassifierPreprocessor
from keras_metaformer.hub import MetaFormerImageConverter
from keras_metaformer.weights.timm_conversion import CheckpointMismatchError

MEAN = np.array([0.485, 0.456, 0.406], "float32")
STD = np.array([0.229, 0.224, 0.225], "float32")
PARITY_ATOL = 1e-4
TAG = "tiny"
REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def reference(arch):
    with np.load(fixture_path(f"{arch}_tiny_io.npz")) as io:
        return dict(io)


def timm_config(arch):
    """timm's `config.json` for the fixture's reduced model."""
    io = reference(arch)
    return {
        "architecture": arch,
        "num_classes": 10,
        "num_features": int(io["dims"][-1]),
        "model_args": {"dims": [int(d) for d in io["dims"]]},
        "pretrained_cfg": {
            "tag": TAG,
            # RandFormer's random mixers fix its input size: the fixture's.
            "input_size": [3, *io["images"].shape[1:3]] if arch.startswith("randformer") else [3, 224, 224],
            "interpolation": "bicubic",
            "crop_pct": 0.9,
            "crop_mode": "center",
            "mean": MEAN.tolist(),
            "std": STD.tolist(),
            "num_classes": 10,
            "first_conv": "stem.conv",
        },
    }


def timm_files(arch, state=None):
    """`{file name: bytes}` of the reduced model's timm Hub repository."""
    state = reference_weights(arch, TIMM_KEYS[arch]["tiny"]) if state is None else state
    return {"config.json": json.dumps(timm_config(arch)).encode(), "model.safetensors": save(state)}


def write_preset(folder, files):
    folder.mkdir(parents=True, exist_ok=True)
    for name, body in files.items():
        (folder / name).write_bytes(body)
    return str(folder)


def normalised(images):
    return (images.astype("float32") / 255.0 - MEAN) / STD


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    root = tmp_path_factory.mktemp("timm_presets")
    return lambda arch: write_preset(root / arch, timm_files(arch))


# --- timm presets ----------------------------------------------------------------


@pytest.mark.parametrize("arch", sorted(FIRST_SIZES))
def test_timm_preset_classifier_and_backbone_match_timm(arch, presets):
    io = reference(arch)
    classifier = keras_hub.models.ImageClassifier.from_preset(presets(arch))
    assert isinstance(classifier, MetaFormerImageClassifier)
    assert classifier.head == ("mlp" if arch.startswith(("convformer", "caformer")) else "linear")
    logits = keras.ops.convert_to_numpy(classifier(normalised(io["images"])))
    np.testing.assert_allclose(logits, io["logits"], rtol=0, atol=PARITY_ATOL)

    backbone = keras_hub.models.Backbone.from_preset(presets(arch))
    assert isinstance(backbone, MetaFormerBackbone) and backbone.architecture == arch
    features = keras.ops.convert_to_numpy(backbone(normalised(io["images"])))
    scale = np.abs(io["features"]).max()
    np.testing.assert_allclose(features / scale, io["features"] / scale, rtol=0, atol=1e-4)


def test_timm_preset_with_num_classes_keeps_the_backbone_and_makes_a_new_head(presets):
    arch = "caformer_s18"
    io = reference(arch)
    classifier = keras_hub.models.ImageClassifier.from_preset(presets(arch), num_classes=3)
    assert classifier.output_shape == (None, 3)
    features = keras.ops.convert_to_numpy(classifier.backbone(normalised(io["images"])))
    scale = np.abs(io["features"]).max()
    np.testing.assert_allclose(features / scale, io["features"] / scale, rtol=0, atol=1e-4)


def test_timm_preset_brings_timms_evaluation_transform(presets):
    preprocessor = keras_hub.models.ImageClassifierPreprocessor.from_preset(presets("poolformer_s12"))
    assert isinstance(preprocessor, MetaFormerImageClassifierPreprocessor)
    converter = preprocessor.image_converter
    assert isinstance(converter, MetaFormerImageConverter)
    assert (converter.image_size, converter.crop_pct, converter.interpolation) == ((224, 224), 0.9, "bicubic")
    image = skimage_data.chelsea()
    expected = (pil_eval_transform(image, 248, 224) / 255.0 - MEAN) / STD
    ours = keras.ops.convert_to_numpy(converter(image))
    assert np.abs(ours - expected).max() <= 1.0 / 255.0 / STD.min() + 1e-5


@pytest.mark.parametrize(
    "change, listed",
    [
        ("drop", "Missing from the checkpoint (1):\n  stages.3.blocks.1.mlp.fc2.weight"),
        ("add", "Unexpected in the checkpoint (1):\n  stages.9.extra.weight"),
    ],
)
def test_timm_preset_is_loaded_strictly(change, listed, tmp_path):
    arch = "poolformer_s12"
    state = reference_weights(arch, TIMM_KEYS[arch]["tiny"])
    if change == "drop":
        del state["stages.3.blocks.1.mlp.fc2.weight"]
    else:
        state["stages.9.extra.weight"] = np.zeros(3, "float32")
    preset = write_preset(tmp_path, timm_files(arch, state))
    with pytest.raises(CheckpointMismatchError, match="no weight was changed") as error:
        keras_hub.models.ImageClassifier.from_preset(preset)
    assert listed in str(error.value)


def test_timm_preset_refuses_model_args_it_cannot_build(tmp_path):
    files = timm_files("poolformer_s12")
    config = json.loads(files["config.json"])
    config["model_args"]["use_mlp_head"] = True
    files["config.json"] = json.dumps(config).encode()
    with pytest.raises(ValueError, match=r"`model_args` that keras_metaformer does not support: \['use_mlp_head'\]"):
        keras_hub.models.Backbone.from_preset(write_preset(tmp_path, files))


@pytest.mark.parametrize("arch, outcome", [("resnet18", "ResNetBackbone"), ("vit_tiny", "has no converter")])
def test_other_timm_architectures_still_reach_keras_hubs_loader(arch, outcome, tmp_path):
    from keras_hub.src.utils.preset_utils import get_preset_loader

    (tmp_path / "config.json").write_text(json.dumps({"architecture": arch, "num_classes": 10}))
    if outcome.endswith("Backbone"):
        assert get_preset_loader(str(tmp_path)).check_backbone_class().__name__ == outcome
    else:
        with pytest.raises(ValueError, match=f"KerasHub {outcome} for timm models with architecture `'{arch}'`"):
            get_preset_loader(str(tmp_path))


# --- Our own presets ------------------------------------------------------------


def test_save_to_preset_round_trips_backbone_and_classifier(presets, tmp_path):
    io = reference("convformer_s18")
    x = normalised(io["images"])
    classifier = keras_hub.models.ImageClassifier.from_preset(presets("convformer_s18"))
    classifier.save_to_preset(str(tmp_path / "classifier"))
    classifier.backbone.save_to_preset(str(tmp_path / "backbone"))

    restored = keras_hub.models.ImageClassifier.from_preset(str(tmp_path / "classifier"))
    assert isinstance(restored, MetaFormerImageClassifier) and restored.preprocessor.image_converter.crop_pct == 0.9
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(restored(x)), keras.ops.convert_to_numpy(classifier(x)))
    backbone = keras_hub.models.Backbone.from_preset(str(tmp_path / "backbone"))
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(backbone(x)), keras.ops.convert_to_numpy(classifier.backbone(x))
    )


FRESH_PROCESS = """
import json, sys
import numpy as np

sys.modules["keras_hub"] = None  # first, as where keras-hub is not installed
try:
    import keras_metaformer.hub
except ImportError as error:
    missing = str(error)
del sys.modules["keras_hub"]

import keras, keras_hub
import keras_metaformer.hub

x, expected = np.load(sys.argv[1])["x"], json.loads(sys.argv[3])
hf = keras_hub.models.ImageClassifier.from_preset("hf://timm/poolformer_s12.tiny")
saved = keras_hub.models.ImageClassifier.from_preset(sys.argv[2])
difference = lambda model, name: float(np.abs(keras.ops.convert_to_numpy(model(x)) - expected[name]).max())
outcome = {name: [type(m).__name__, difference(m, name)] for name, m in (("hf", hf), ("saved", saved))}
print(json.dumps(dict(outcome, missing=missing)))
"""


def test_a_fresh_process_loads_hf_timm_presets_and_saved_ones(presets, tmp_path, monkeypatch):
    """`hf://` through a loopback Hub (`HF_ENDPOINT`), and a `save_to_preset`
    folder: both need only `import keras_metaformer.hub` first. Without
    keras-hub, that import says how to install it."""
    arch = "poolformer_s12"
    io = reference(arch)
    x = normalised(io["images"])
    model = keras_hub.models.ImageClassifier.from_preset(presets(arch), num_classes=2)
    model.save_to_preset(str(tmp_path / "saved"))
    np.savez(tmp_path / "x.npz", x=x)
    expected = {"hf": io["logits"].tolist(), "saved": keras.ops.convert_to_numpy(model(x)).tolist()}
    files = {timm_url_path(arch, TAG, name): body for name, body in timm_files(arch).items()}
    with HubServer(files) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                FRESH_PROCESS,
                str(tmp_path / "x.npz"),
                str(tmp_path / "saved"),
                json.dumps(expected),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=REPOSITORY,
        )
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["hf"][0] == outcome["saved"][0] == "MetaFormerImageClassifier"
    assert outcome["hf"][1] <= PARITY_ATOL and outcome["saved"][1] <= 1e-6
    assert timm_url_path(arch, TAG, "model.safetensors") in hub.requests
    assert 'pip install "keras-metaformer[hub]" && pip install --no-deps keras-hub' in outcome["missing"]


# --- The image converter -------------------------------------------------------


def test_image_converter_matches_pil_eagerly_and_in_tf_data():
    import tensorflow as tf

    image = np.ascontiguousarray(skimage_data.chelsea().transpose(1, 0, 2))  # portrait
    expected = pil_eval_transform(image, 71, 64)
    converter = MetaFormerImageConverter(image_size=(64, 64), crop_pct=0.9, scale=[1.0] * 3, offset=[0.0] * 3)
    eager = keras.ops.convert_to_numpy(converter(np.stack([image, image])))
    mapped = next(iter(tf.data.Dataset.from_tensors(image).map(converter))).numpy()
    for ours in (eager[0], eager[1], mapped):
        assert ours.shape == expected.shape == (64, 64, 3)
        assert np.abs(ours - expected).max() <= 1.0 and np.abs(ours - expected).mean() < 0.3


def test_image_converter_round_trips_and_checks_crop_pct():
    converter = MetaFormerImageConverter(image_size=(96, 96), crop_pct=0.95)
    assert MetaFormerImageConverter.from_config(converter.get_config()).crop_pct == 0.95
    with pytest.raises(ValueError, match=r"`crop_pct` must be in \(0, 1\], or None. Received: crop_pct=1.5"):
        MetaFormerImageConverter(crop_pct=1.5)
    with pytest.raises(ValueError, match=r"makes square images.*Received: image_size=\(96, 128\)"):
        MetaFormerImageConverter(image_size=(96, 128), crop_pct=0.9)


# --- Fine-tuning and dtype -----------------------------------------------------


def test_classifier_from_a_timm_preset_fine_tunes_with_fit(presets):
    classifier = keras_hub.models.ImageClassifier.from_preset(presets("poolformer_s12"), num_classes=2)
    classifier.preprocessor.image_converter.image_size = (64, 64)
    before = [np.array(w) for w in classifier.trainable_weights]
    images = np.random.default_rng(0).integers(0, 256, (4, 80, 72, 3)).astype("uint8")
    history = classifier.fit(images, np.array([0, 1, 0, 1]), batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert any(not np.array_equal(b, np.array(w)) for b, w in zip(before, classifier.trainable_weights))


def test_backbone_computes_in_its_dtype_policy_and_the_head_in_float32():
    backbone = MetaFormerBackbone("poolformerv2_s12", dims=(8, 16, 32, 64), dtype="mixed_bfloat16")
    blocks = [layer for layer in backbone.layers if layer.name.startswith("stage")]
    assert {layer.compute_dtype for layer in blocks} == {"bfloat16"}
    assert {v.dtype for v in backbone.weights if "seed" not in v.path} == {"float32"}
    classifier = MetaFormerImageClassifier(backbone, num_classes=3)
    x = np.zeros((1, 64, 64, 3), "float32")
    assert keras.ops.convert_to_numpy(backbone(x)).dtype.name == "bfloat16"
    assert keras.ops.convert_to_numpy(classifier(x)).dtype.name == "float32"


def test_backbone_config_round_trips_and_names_what_it_needs():
    backbone = MetaFormerBackbone("poolformer_s12", dims=(8, 16, 24, 32), image_shape=(64, 64, 3))
    config = backbone.get_config()
    assert (config["architecture"], config["dims"], config["image_shape"]) == (
        "poolformer_s12",
        [8, 16, 24, 32],
        (64, 64, 3),
    )
    restored = MetaFormerBackbone.from_config(config)
    assert [w.shape for w in restored.weights] == [w.shape for w in backbone.weights]
    assert sorted(restored.pyramid_outputs) == ["P2", "P3", "P4", "P5"]
    with pytest.raises(ValueError, match=r"needs an `architecture`.*or explicit `depths` and `dims`"):
        MetaFormerBackbone(dims=(8, 16, 24, 32))
    with pytest.raises(ValueError, match="Unknown MetaFormer architecture 'poolformer_s13'"):
        MetaFormerBackbone("poolformer_s13")
