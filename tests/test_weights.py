"""Weights: parity with timm's PyTorch outputs, key mapping, loading, downloads.

The fixtures were written by `tests/reference/make_timm_fixtures.py` from
timm's own modules with random weights (see that script).
"""

import functools
import http.server
import json
import os
import threading

import keras
import numpy as np
import pytest
from safetensors.numpy import load_file
from safetensors.numpy import save

import keras_metaformer
from conftest import fixture_path
from conftest import full_size_model
from keras_metaformer.models.poolformer import POOLFORMER_VARIANTS
from keras_metaformer.weights import timm_conversion

VARIANTS = list(POOLFORMER_VARIANTS)
PARITY_ATOL = 1e-4  # the bound; measured ~1e-6
MEAN = np.array([0.485, 0.456, 0.406], "float32")
STD = np.array([0.229, 0.224, 0.225], "float32")

with open(fixture_path("poolformer_keys.json")) as f:
    TIMM_KEYS = json.load(f)


def reference(variant):
    with np.load(fixture_path(f"poolformer_{variant}_tiny_io.npz")) as data:
        return dict(data)


def weights_file(variant):
    return fixture_path(f"poolformer_{variant}_tiny.safetensors")


def tiny_poolformer(variant, weights=None, **kwargs):
    """The variant's architecture at the fixtures' reduced widths."""
    io = reference(variant)
    config = POOLFORMER_VARIANTS[variant]
    assert tuple(io["depths"]) == config.depths
    arguments = dict(
        depths=config.depths,
        dims=tuple(int(d) for d in io["dims"]),
        layer_scale_init_value=config.layer_scale_init_value,
        classes=10,
        classifier_activation=None,
        input_shape=io["images"].shape[1:],
        weights=weights,
    )
    arguments.update(kwargs)
    return keras_metaformer.MetaFormer(**arguments)


def snapshot(model):
    return [keras.ops.convert_to_numpy(w).copy() for w in model.weights]


# --- Parity with timm ----------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_match_timm_with_in_graph_preprocessing(variant):
    io = reference(variant)
    model = tiny_poolformer(variant, weights=weights_file(variant))
    logits = model.predict(io["images"].astype("float32"), verbose=0)
    np.testing.assert_allclose(logits, io["logits"], rtol=0, atol=PARITY_ATOL)


@pytest.mark.parametrize("variant", VARIANTS)
def test_features_match_timm_on_normalised_input(variant):
    io = reference(variant)
    model = tiny_poolformer(
        variant, weights=weights_file(variant), include_top=False, include_preprocessing=False
    )
    normalized = (io["images"].astype("float32") / 255.0 - MEAN) / STD
    features = model.predict(normalized, verbose=0)
    np.testing.assert_allclose(features, io["features"], rtol=0, atol=PARITY_ATOL)


def test_authors_key_format_loads_to_the_same_logits():
    variant = "s12"
    io = reference(variant)
    timm_state = load_file(weights_file(variant))
    authors_state = {a: timm_state[t] for a, t in TIMM_KEYS[variant]["authors_to_timm"].items()}
    assert "network.0.0.layer_scale_1" in authors_state and "patch_embed.proj.weight" in authors_state
    model = keras_metaformer.load_timm_weights(tiny_poolformer(variant), authors_state)
    logits = model.predict(io["images"].astype("float32"), verbose=0)
    np.testing.assert_allclose(logits, io["logits"], rtol=0, atol=PARITY_ATOL)


@pytest.mark.parametrize("variant", ["s12", "m48"])
def test_authors_keys_are_renamed_like_timms_filter(variant):
    mapping = TIMM_KEYS[variant]["authors_to_timm"]
    renamed = timm_conversion.authors_to_timm_keys({k: k for k in mapping})
    # `renamed` maps each new (timm) key to the authors' key it came from.
    assert renamed == {t: a for a, t in mapping.items()}


# --- Key and shape lists of the full-size variants ----------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_timm_tensor_maps_to_exactly_one_weight(variant):
    model = full_size_model(variant)
    targets = timm_conversion.timm_key_map(model)
    expected = {key: tuple(shape) for key, shape in TIMM_KEYS[variant]["timm"]}
    assert set(targets) == set(expected)
    assert len({id(v) for v in targets.values()}) == len(targets)
    # Every model weight but the preprocessing constants is a target.
    loadable = [w for w in model.weights if not w.path.startswith("preprocessing/")]
    assert len(loadable) == len(targets)
    for key, shape in expected.items():
        placeholder = np.broadcast_to(np.float32(0), shape)
        converted = timm_conversion.to_keras_layout(placeholder, targets[key].shape)
        assert converted is not None, f"{key}: {shape} vs {targets[key].shape}"


def test_layout_conversions():
    conv = np.arange(2 * 3 * 5 * 7).reshape(2, 3, 5, 7)  # OIHW
    np.testing.assert_array_equal(
        timm_conversion.to_keras_layout(conv, (5, 7, 3, 2)), conv.transpose(2, 3, 1, 0)
    )
    pointwise = np.arange(6).reshape(3, 2, 1, 1)  # 1x1 conv (O, I, 1, 1)
    np.testing.assert_array_equal(
        timm_conversion.to_keras_layout(pointwise, (2, 3)), pointwise[:, :, 0, 0].T
    )
    linear = np.arange(6).reshape(3, 2)
    np.testing.assert_array_equal(timm_conversion.to_keras_layout(linear, (2, 3)), linear.T)
    assert timm_conversion.to_keras_layout(linear, (3, 3)) is None


# --- Loading: formats, strictness, atomicity ---------------------------------


def test_include_top_false_skips_the_head_tensors():
    io = reference("s12")
    model = tiny_poolformer(
        "s12", weights=weights_file("s12"), include_top=False, include_preprocessing=False
    )
    assert not any(w.path.startswith(("head_norm", "predictions")) for w in model.weights)
    normalized = (io["images"].astype("float32") / 255.0 - MEAN) / STD
    np.testing.assert_allclose(model.predict(normalized, verbose=0), io["features"], atol=PARITY_ATOL)


def test_mismatched_checkpoint_is_refused_and_the_model_left_untouched():
    model = tiny_poolformer("s12")
    before = snapshot(model)
    state = load_file(weights_file("s12"))
    del state["stages.2.blocks.5.mlp.fc2.bias"]
    state["stages.4.blocks.0.norm1.weight"] = np.ones(3, "float32")
    state["head.fc.weight"] = np.ones((11, 40), "float32")
    with pytest.raises(ValueError) as error:
        keras_metaformer.load_timm_weights(model, state)
    message = str(error.value)
    assert "no weight was changed" in message
    assert "Missing from the checkpoint (1):\n  stages.2.blocks.5.mlp.fc2.bias" in message
    assert "Unexpected in the checkpoint (1):\n  stages.4.blocks.0.norm1.weight" in message
    assert "Shape mismatches (1):\n  head.fc.weight: checkpoint (11, 40), model (40, 10)" in message
    for old, new in zip(before, snapshot(model)):
        np.testing.assert_array_equal(old, new)


def test_a_checkpoint_of_another_variant_is_refused():
    with pytest.raises(ValueError, match=r"Missing from the checkpoint \(120\)"):
        tiny_poolformer("s24", weights=weights_file("s12"))


def test_npz_and_keras_weight_files_load(tmp_path):
    io = reference("s12")
    images = io["images"].astype("float32")
    state = load_file(weights_file("s12"))
    np.savez(tmp_path / "s12.npz", **state)
    from_npz = tiny_poolformer("s12", weights=str(tmp_path / "s12.npz"))
    np.testing.assert_allclose(from_npz.predict(images, verbose=0), io["logits"], atol=PARITY_ATOL)
    from_npz.save_weights(tmp_path / "s12.weights.h5")
    from_h5 = tiny_poolformer("s12", weights=tmp_path / "s12.weights.h5")
    np.testing.assert_allclose(from_h5.predict(images, verbose=0), io["logits"], atol=PARITY_ATOL)


def test_corrupt_and_unsupported_files_are_refused(tmp_path):
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(open(weights_file("s12"), "rb").read()[:5000])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        tiny_poolformer("s12", weights=str(truncated))
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip archive")
    with pytest.raises(ValueError, match="corrupt or truncated"):
        keras_metaformer.load_timm_weights(tiny_poolformer("s12"), str(garbage))
    pickle = tmp_path / "poolformer_s12.pth.tar"
    pickle.write_bytes(b"\x80\x04")
    with pytest.raises(ValueError, match=r"Unsupported weights file.*\.safetensors"):
        tiny_poolformer("s12", weights=str(pickle))
    with pytest.raises(ValueError, match=r"torch.load\(path, weights_only=True\)"):
        keras_metaformer.load_timm_weights(tiny_poolformer("s12"), str(pickle))


def test_pretrained_configs_hold_the_evaluation_preprocessing():
    config = keras_metaformer.get_pretrained_config("poolformer_m36", "imagenet")
    assert config.name == "poolformer_m36.sail_in1k"
    assert (config.input_size, config.crop_pct, config.resize_size) == ((224, 224), 0.95, 235)
    assert config.interpolation == "bicubic"
    assert config.mean == (0.485, 0.456, 0.406) and config.std == (0.229, 0.224, 0.225)
    assert keras_metaformer.available_weights("poolformer_s12") == ["sail_in1k"]
    with pytest.raises(ValueError, match=r"Unknown weight tag 'in22k' for poolformer_s12"):
        keras_metaformer.get_pretrained_config("poolformer_s12", "in22k")


# --- weights="imagenet": downloads from a loopback server ---------------------

S12_URL_PATH = "/timm/poolformer_s12.sail_in1k/resolve/main/model.safetensors"


@functools.lru_cache(maxsize=None)
def _served_s12_state():
    """Random tensors with the real S12 checkpoint's names and shapes."""
    rng = np.random.default_rng(0)
    return {
        key: rng.normal(size=shape).astype("float32")
        for key, shape in TIMM_KEYS["s12"]["timm"]
    }


class _WeightServer(http.server.ThreadingHTTPServer):
    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files = {}
        self.requests = []


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.requests.append(self.path)
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def weight_server(monkeypatch, keras_home):
    server = _WeightServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    yield server
    server.shutdown()
    server.server_close()


def _cached_file(keras_home):
    return keras_home / "models" / "poolformer_s12.sail_in1k.safetensors"


def test_imagenet_weights_download_once_then_come_from_the_cache(weight_server, keras_home):
    state = _served_s12_state()
    weight_server.files[S12_URL_PATH] = save(state)
    model = keras_metaformer.PoolFormerS12(weights="imagenet")
    assert weight_server.requests == [S12_URL_PATH]
    assert _cached_file(keras_home).is_file()

    def value(layer, *attributes):
        variable = model.get_layer(layer)
        for attribute in attributes:
            variable = getattr(variable, attribute)
        return keras.ops.convert_to_numpy(variable)

    np.testing.assert_array_equal(value("stem", "conv", "kernel"), state["stem.conv.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(
        value("stage2_block3", "mlp", "fc1", "kernel"),
        state["stages.2.blocks.3.mlp.fc1.weight"][:, :, 0, 0].T,
    )
    np.testing.assert_array_equal(
        value("stage3_block1", "layer_scale2", "scale"), state["stages.3.blocks.1.layer_scale2.scale"]
    )
    np.testing.assert_array_equal(value("predictions", "kernel"), state["head.fc.weight"].T)

    backbone = keras_metaformer.PoolFormerS12(weights="sail_in1k", include_top=False)
    assert weight_server.requests == [S12_URL_PATH]  # served from the cache
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(backbone.get_layer("stage1_downsample").conv.bias),
        state["stages.1.downsample.conv.bias"],
    )


def test_a_corrupt_cached_file_is_replaced(weight_server, keras_home):
    weight_server.files[S12_URL_PATH] = save(_served_s12_state())
    cached = _cached_file(keras_home)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(weight_server.files[S12_URL_PATH][:100_000])  # an interrupted download
    keras_metaformer.PoolFormerS12(weights="imagenet", include_top=False)
    assert weight_server.requests == [S12_URL_PATH]
    assert cached.stat().st_size == len(weight_server.files[S12_URL_PATH])


def test_a_truncated_download_is_detected_and_dropped_from_the_cache(weight_server, keras_home):
    weight_server.files[S12_URL_PATH] = save(_served_s12_state())[:-1000]
    with pytest.raises(ValueError, match=r"corrupt or truncated.*removed from the cache"):
        keras_metaformer.PoolFormerS12(weights="imagenet")
    assert not _cached_file(keras_home).exists()
    assert len(weight_server.requests) == 2  # the first file, then one retry


def test_offline_download_names_the_url_and_the_local_file_option(keras_home):
    # conftest points HF_ENDPOINT at a closed local port.
    with pytest.raises(OSError) as error:
        keras_metaformer.PoolFormerM36(weights="imagenet")
    message = str(error.value)
    assert "http://127.0.0.1:9/timm/poolformer_m36.sail_in1k/resolve/main/model.safetensors" in message
    assert "PoolFormerM36(weights='/path/to/model.safetensors')" in message
    assert not _cached_file(keras_home).exists()
    assert not any(keras_home.rglob("*.safetensors"))


def test_a_missing_file_on_the_server_is_reported(weight_server):
    with pytest.raises(OSError, match="404"):
        keras_metaformer.PoolFormerS12(weights="imagenet")
