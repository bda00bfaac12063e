"""Weights: parity with timm's PyTorch outputs, key mapping, loading, downloads.

The fixtures were written by `tests/reference/make_timm_fixtures.py` from
timm's own modules, with the pseudo-random weights of
`tests/reference/reference_weights.py`, which the tests recompute.
"""

import functools
import os
import pathlib
import re
import socket
import threading
import time

import keras
import numpy as np
import pytest
from conftest import FIRST_SIZES
from conftest import ONE_SIZE_ON_JAX
from conftest import TIMM_KEYS
from conftest import fixture_path
from conftest import full_size_model
from hub_server import HubServer
from hub_server import timm_url_path
from reference_weights import reference_weights
from safetensors.numpy import save

import keras_metaformer
from keras_metaformer.models.variants import all_variants
from keras_metaformer.models.variants import architecture
from keras_metaformer.weights import timm_conversion

ARCHS = [f"{family}_{size}" for family, size in all_variants()]
# Parity for every size on TensorFlow; on JAX, for the first of each family.
PARITY_ARCHS = [
    arch
    if arch in FIRST_SIZES
    else pytest.param(arch, marks=pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason=ONE_SIZE_ON_JAX))
    for arch in ARCHS
]
PARITY_ATOL = 1e-4  # the bound on logits; measured ~1e-6
FEATURES_RTOL = 1e-4
MEAN = np.array([0.485, 0.456, 0.406], "float32")
STD = np.array([0.229, 0.224, 0.225], "float32")


def reference(arch, suffix=""):
    with np.load(fixture_path(f"{arch}_tiny{suffix}_io.npz")) as data:
        return dict(data)


def tiny_state(arch):
    """The reduced model's weights, in timm's format, as timm had them."""
    return reference_weights(arch, TIMM_KEYS[arch]["tiny"])


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_weights")


def weights_file(weights_dir, arch):
    """The reduced model's weights as a timm `.safetensors` file."""
    path = weights_dir / f"{arch}_tiny.safetensors"
    if not path.exists():
        path.write_bytes(save(tiny_state(arch)))
    return str(path)


def tiny_model(arch, weights=None, suffix="", **kwargs):
    """The architecture at the fixtures' reduced widths, as timm built it."""
    io = reference(arch, suffix)
    family, size = arch.rsplit("_", 1)
    arguments = architecture(family, size)
    arguments.update(
        dims=tuple(int(d) for d in reference(arch)["dims"]),
        classes=10,
        classifier_activation=None,
        input_shape=io["images"].shape[1:],
        weights=weights,
    )
    arguments.update(kwargs)
    return keras_metaformer.MetaFormer(**arguments)


def tiny_poolformer(variant, weights=None, **kwargs):
    return tiny_model(f"poolformer_{variant}", weights, **kwargs)


def snapshot(model):
    return [keras.ops.convert_to_numpy(w).copy() for w in model.weights]


# --- Parity with timm ----------------------------------------------------------


def _assert_matches_timm(model, io, compiled=True):
    """Logits (raw [0, 255] input, in-graph preprocessing) and final features.

    `compiled=False` calls the model directly instead of through `predict`:
    on TensorFlow that skips tracing and optimising a graph, 3-4 s of the
    5 s each deep variant takes.
    """
    last_block = [layer for layer in model.layers if "_block" in layer.name][-1]
    features_model = keras.Model(model.input, [model.output, last_block.output])
    images = io["images"].astype("float32")
    if compiled:
        logits, features = features_model.predict(images, verbose=0)
    else:
        logits, features = (keras.ops.convert_to_numpy(x) for x in features_model(images))
    np.testing.assert_allclose(logits, io["logits"], rtol=0, atol=PARITY_ATOL)
    # Final feature maps reach magnitudes near 10 in the deep variants, where
    # float32 rounding alone is ~1e-5 relative: compare them relatively too.
    np.testing.assert_allclose(features, io["features"], rtol=FEATURES_RTOL, atol=PARITY_ATOL)


@pytest.mark.parametrize("arch", PARITY_ARCHS)
def test_outputs_match_timm(arch, weights_dir):
    model = tiny_model(arch, weights=weights_file(weights_dir, arch))
    # `predict`, as users run a model, for the first size of each family; the
    # other sizes add depth and width to the same layers.
    _assert_matches_timm(model, reference(arch), compiled=arch in FIRST_SIZES)


@pytest.mark.parametrize("arch", ["convformer_s18", "caformer_s18"])
def test_outputs_match_timm_at_384(arch, weights_dir):
    model = tiny_model(arch, weights=weights_file(weights_dir, arch), suffix="_384")
    assert tuple(model.input.shape) == (None, 384, 384, 3)
    _assert_matches_timm(model, reference(arch, "_384"))


@pytest.mark.parametrize(
    "arch, authors_key",
    [
        ("poolformer_s12", "network.0.0.layer_scale_1"),
        ("randformer_s12", "stages.2.0.token_mixer.random_matrix"),
        ("caformer_s18", "downsample_layers.0.post_norm.weight"),
    ],
)
def test_authors_key_format_loads_to_the_same_outputs(arch, authors_key):
    timm_state = tiny_state(arch)
    authors_state = {a: timm_state[t] for a, t in TIMM_KEYS[arch]["authors_to_timm"].items()}
    assert authors_key in authors_state
    model = keras_metaformer.load_timm_weights(tiny_model(arch), authors_state)
    _assert_matches_timm(model, reference(arch))


@pytest.mark.parametrize("arch", ["poolformer_m48", "identityformer_s12", "convformer_b36", "caformer_s36"])
def test_authors_keys_are_renamed_like_timms_filter(arch):
    mapping = TIMM_KEYS[arch]["authors_to_timm"]
    renamed = timm_conversion.authors_to_timm_keys({k: k for k in mapping})
    # `renamed` maps each new (timm) key to the authors' key it came from.
    assert renamed == {t: a for a, t in mapping.items()}


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="a TensorFlow graph")
@pytest.mark.parametrize("arch", ["poolformer_s12", "poolformerv2_s12", "convformer_s18", "caformer_s18"])
def test_frozen_function_matches_timm_and_keeps_its_weights(arch, weights_dir):
    from keras_metaformer.export import frozen_function

    model = tiny_model(arch, weights=weights_file(weights_dir, arch))
    predict = frozen_function(model)
    # The function holds copies: zeroing the model's weights must not reach it.
    for weight in model.weights:
        weight.assign(np.zeros(weight.shape, weight.dtype))
    io = reference(arch)
    logits = keras.ops.convert_to_numpy(predict(io["images"].astype("float32")))
    np.testing.assert_allclose(logits, io["logits"], rtol=0, atol=PARITY_ATOL)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="a TensorFlow graph")
def test_frozen_function_keeps_the_bfloat16_policy(weights_dir):
    from keras_metaformer.export import frozen_function

    keras.config.set_dtype_policy("mixed_bfloat16")
    model = tiny_model("poolformer_s12", weights=weights_file(weights_dir, "poolformer_s12"))
    io = reference("poolformer_s12")
    logits = keras.ops.convert_to_numpy(frozen_function(model)(io["images"].astype("float32")))
    # bfloat16 keeps 8 bits of mantissa: agreement to a few hundredths, not 1e-4.
    np.testing.assert_allclose(logits, io["logits"], rtol=0, atol=0.05)
    assert not np.allclose(logits, io["logits"], rtol=0, atol=PARITY_ATOL)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="a TensorFlow graph")
def test_frozen_function_refuses_a_model_with_two_outputs():
    from keras_metaformer.export import frozen_function

    model = tiny_model("poolformer_s12")
    features = [layer for layer in model.layers if "_block" in layer.name][-1].output
    with pytest.raises(ValueError, match="1 inputs and 2 outputs"):
        frozen_function(keras.Model(model.inputs, [model.output, features]))


@pytest.mark.skipif(keras.backend.backend() == "tensorflow", reason="the error of other backends")
def test_frozen_function_explains_that_it_needs_tensorflow():
    from keras_metaformer.export import frozen_function

    with pytest.raises(ValueError, match="KERAS_BACKEND=tensorflow"):
        frozen_function(tiny_model("poolformer_s12"))


# --- Full-size variants: key and shape lists, parameter counts -------------

# Parameter counts in the papers' tables, to their precision (millions).
PAPER_PARAMS_M = {
    "poolformer_s12": 11.92,
    "poolformer_s24": 21.39,
    "poolformer_s36": 30.86,
    "poolformer_m36": 56.17,
    "poolformer_m48": 73.47,
    "poolformerv2_s12": 11.9,
    "poolformerv2_m48": 73.3,
    "convformer_s18": 27,
    "convformer_s36": 40,
    "convformer_m36": 57,
    "convformer_b36": 100,
    "caformer_s18": 26,
    "caformer_s36": 39,
    "caformer_m36": 56,
    "caformer_b36": 99,
}

needs_tensorflow = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="backend-independent architecture check of full-size models; run on "
    "TensorFlow, which builds them several times faster than JAX",
)


@needs_tensorflow
@pytest.mark.parametrize("arch", ARCHS)
def test_full_size_model_matches_timms_tensors_and_the_papers_parameter_count(arch):
    model = full_size_model(arch)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == TIMM_KEYS[arch]["params"]
    if arch in PAPER_PARAMS_M:
        digits = 2 if arch.startswith("poolformer_") else (1 if "v2" in arch else 0)
        assert round(trainable / 1e6, digits) == PAPER_PARAMS_M[arch]
    targets = timm_conversion.timm_key_map(model)
    expected = {key: tuple(shape) for key, shape in TIMM_KEYS[arch]["timm"]}
    assert set(targets) == set(expected)
    assert len({id(v) for v in targets.values()}) == len(targets)
    # Every model weight but the preprocessing constants and seeds is a target.
    loadable = [w for w in model.weights if not w.path.startswith("preprocessing/") and "seed_generator" not in w.path]
    assert len(loadable) == len(targets)
    for key, shape in expected.items():
        placeholder = np.broadcast_to(np.float32(0), shape)
        converted = timm_conversion.to_keras_layout(placeholder, targets[key].shape, key)
        assert converted is not None, f"{key}: {shape} vs {targets[key].shape}"
    full_size_model.cache_clear()  # one full-size model in memory at a time


def test_layout_conversions():
    conv = np.arange(2 * 3 * 5 * 7).reshape(2, 3, 5, 7)  # OIHW
    np.testing.assert_array_equal(timm_conversion.to_keras_layout(conv, (5, 7, 3, 2)), conv.transpose(2, 3, 1, 0))
    pointwise = np.arange(6).reshape(3, 2, 1, 1)  # 1x1 conv (O, I, 1, 1)
    np.testing.assert_array_equal(timm_conversion.to_keras_layout(pointwise, (2, 3)), pointwise[:, :, 0, 0].T)
    linear = np.arange(6).reshape(3, 2)
    np.testing.assert_array_equal(timm_conversion.to_keras_layout(linear, (2, 3)), linear.T)
    assert timm_conversion.to_keras_layout(linear, (3, 3)) is None
    depthwise = np.arange(4 * 1 * 3 * 3).reshape(4, 1, 3, 3)  # (C, 1, H, W)
    np.testing.assert_array_equal(
        timm_conversion.to_keras_layout(depthwise, (3, 3, 4, 1)), depthwise.transpose(2, 3, 0, 1)
    )
    square = np.arange(9).reshape(3, 3)
    np.testing.assert_array_equal(
        timm_conversion.to_keras_layout(square, (3, 3), "stages.2.blocks.0.token_mixer.random_matrix"),
        square,
    )


# --- Loading: formats, strictness, atomicity ---------------------------------


def test_include_top_false_skips_the_head_tensors(weights_dir):
    io = reference("poolformer_s12")
    model = tiny_poolformer(
        "s12", weights=weights_file(weights_dir, "poolformer_s12"), include_top=False, include_preprocessing=False
    )
    assert not any(w.path.startswith(("head_norm", "predictions")) for w in model.weights)
    normalized = (io["images"].astype("float32") / 255.0 - MEAN) / STD
    np.testing.assert_allclose(model.predict(normalized, verbose=0), io["features"], atol=PARITY_ATOL)


def test_mismatched_checkpoint_is_refused_and_the_model_left_untouched():
    model = tiny_poolformer("s12")
    before = snapshot(model)
    state = tiny_state("poolformer_s12")
    del state["stages.2.blocks.5.mlp.fc2.bias"]
    state["stages.4.blocks.0.norm1.weight"] = np.ones(3, "float32")
    state["head.fc.weight"] = np.ones((11, 64), "float32")
    with pytest.raises(ValueError) as error:
        keras_metaformer.load_timm_weights(model, state)
    message = str(error.value)
    assert "no weight was changed" in message
    assert "Missing from the checkpoint (1):\n  stages.2.blocks.5.mlp.fc2.bias" in message
    assert "Unexpected in the checkpoint (1):\n  stages.4.blocks.0.norm1.weight" in message
    assert "Shape mismatches (1):\n  head.fc.weight: checkpoint (11, 64), model (64, 10)" in message
    for old, new in zip(before, snapshot(model)):
        np.testing.assert_array_equal(old, new)


def test_a_checkpoint_of_another_variant_is_refused(weights_dir):
    with pytest.raises(ValueError, match=r"Missing from the checkpoint \(120\)"):
        tiny_poolformer("s24", weights=weights_file(weights_dir, "poolformer_s12"))


def test_npz_and_keras_weight_files_load(tmp_path):
    io = reference("poolformer_s12")
    images = io["images"].astype("float32")
    np.savez(tmp_path / "s12.npz", **tiny_state("poolformer_s12"))
    from_npz = tiny_poolformer("s12", weights=str(tmp_path / "s12.npz"))
    np.testing.assert_allclose(from_npz.predict(images, verbose=0), io["logits"], atol=PARITY_ATOL)
    from_npz.save_weights(tmp_path / "s12.weights.h5")
    from_h5 = tiny_poolformer("s12", weights=tmp_path / "s12.weights.h5")
    np.testing.assert_allclose(from_h5.predict(images, verbose=0), io["logits"], atol=PARITY_ATOL)


def test_corrupt_and_unsupported_files_are_refused(tmp_path, weights_dir):
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(pathlib.Path(weights_file(weights_dir, "poolformer_s12")).read_bytes()[:5000])
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


@pytest.mark.parametrize("suffix", [".weights.h5", ".keras"])
def test_a_keras_file_of_another_architecture_is_listed_and_changes_nothing(tmp_path, suffix):
    from keras_metaformer.weights.resolve import load_keras_weights

    path = str(tmp_path / f"s12_10_classes{suffix}")
    saved = tiny_poolformer("s12")
    saved.save_weights(path) if suffix == ".weights.h5" else saved.save(path)
    # The same blocks and another head: Keras would load the blocks, then fail.
    model = tiny_poolformer("s12", classes=7)
    before = snapshot(model)
    with pytest.raises(ValueError) as error:
        load_keras_weights(model, path)
    message = str(error.value)
    assert f"Cannot load {path!r} into model 'metaformer': the file's weights do not match" in message
    assert "no weight was changed" in message
    assert "Shape mismatches (2):\n  layers/dense/vars/0 (layer 'predictions'): file (64, 10), model (64, 7)" in message
    assert "could not be loaded" not in message  # not Keras' own report
    for old, new in zip(before, snapshot(model)):
        np.testing.assert_array_equal(old, new)
    # More blocks than the file holds: each missing one is named.
    first = "layers/meta_former_block_12/layer_scale1/vars/0 (layer 'stage2_block4'): (32,)"
    with pytest.raises(ValueError, match=re.escape(f"Missing from the file (120):\n  {first}")):
        tiny_poolformer("s24", weights=path)


@pytest.mark.parametrize(
    "suffix, expected",
    [
        (".weights.h5", "not an HDF5 file. Expected an HDF5 file"),
        (".keras", "not a zip archive. Expected a zip archive"),
    ],
)
def test_a_keras_file_that_is_not_one_names_the_path_and_the_format(tmp_path, suffix, expected):
    path = tmp_path / f"notes{suffix}"
    path.write_text("these are not weights")
    message = f"Cannot read the Keras weights file {str(path)!r}: it is {expected}"
    with pytest.raises(ValueError, match=re.escape(message)):
        tiny_poolformer("s12", weights=str(path))


@pytest.mark.parametrize("source", [12, ["stem.conv.weight"], None])
def test_an_unsupported_checkpoint_source_names_the_accepted_types(source):
    accepted = r"Expected a checkpoint path \(str or os.PathLike.*or a mapping of names to arrays.*Received: source="
    with pytest.raises(TypeError, match=accepted):
        keras_metaformer.load_timm_weights(tiny_poolformer("s12"), source)


@pytest.mark.parametrize(
    "value", [[[1.0, 2.0], [3.0]], np.array([np.zeros(2), None], dtype=object), np.array(["weights"])]
)
def test_a_checkpoint_entry_that_is_not_numbers_names_its_key(value):
    state = tiny_state("poolformer_s12")
    state["stages.1.blocks.0.mlp.fc1.bias"] = value
    with pytest.raises(ValueError, match=r"Checkpoint entry 'stages.1.blocks.0.mlp.fc1.bias' is not an array of"):
        keras_metaformer.load_timm_weights(tiny_poolformer("s12"), state)


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

S12_URL_PATH = timm_url_path("poolformer_s12", "sail_in1k")
TIMEOUT = "KERAS_METAFORMER_DOWNLOAD_TIMEOUT"


@functools.cache
def _served_s12_state():
    """Random tensors with the real S12 checkpoint's names and shapes."""
    rng = np.random.default_rng(0)
    return {key: rng.normal(size=shape).astype("float32") for key, shape in TIMM_KEYS["poolformer_s12"]["timm"]}


@pytest.fixture
def weight_server(monkeypatch, keras_home):
    with HubServer() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        yield server


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
    with pytest.raises(ValueError, match=r"corrupt or truncated.*removed from the cache") as error:
        keras_metaformer.PoolFormerS12(weights="imagenet")
    assert not _cached_file(keras_home).exists()
    assert len(weight_server.requests) == 2  # the first file, then one retry
    _assert_one_exception(error.value)


def test_offline_download_names_the_url_and_the_local_file_option(keras_home):
    # conftest points HF_ENDPOINT at a closed local port.
    with pytest.raises(OSError) as error:
        keras_metaformer.PoolFormerM36(weights="imagenet")
    message = str(error.value)
    assert "http://127.0.0.1:9/timm/poolformer_m36.sail_in1k/resolve/main/model.safetensors" in message
    assert "PoolFormerM36(weights='/path/to/model.safetensors')" in message
    assert not _cached_file(keras_home).exists()
    assert not any(keras_home.rglob("*.safetensors"))
    _assert_one_exception(error.value)


def _assert_one_exception(error):
    """No chain of tracebacks (urllib's, say) printed above the message."""
    assert error.__cause__ is None and (error.__suppress_context__ or error.__context__ is None)


def test_a_missing_file_on_the_server_is_reported(weight_server):
    with pytest.raises(OSError, match="HTTP 404") as error:
        keras_metaformer.PoolFormerS12(weights="imagenet")
    _assert_one_exception(error.value)


class _SilentServer:
    """A loopback server that accepts connections and then never answers, or
    (`stall_mid_file`) answers with the start of a file and then stalls."""

    def __init__(self, stall_mid_file):
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.done = threading.Event()
        self.connections = []
        if stall_mid_file:
            threading.Thread(target=self._answer_partly, daemon=True).start()
        # Otherwise the kernel completes the handshake and nobody accepts.

    def _answer_partly(self):
        while not self.done.is_set():
            try:
                connection, _ = self.socket.accept()
            except OSError:  # closed
                return
            self.connections.append(connection)
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"\0" * 1000)

    def close(self):
        self.done.set()
        for connection in self.connections:
            connection.close()
        self.socket.close()


@pytest.mark.parametrize("stall_mid_file", [False, True], ids=["never-answers", "stalls-mid-file"])
def test_a_server_that_stops_answering_times_out_like_an_offline_machine(keras_home, monkeypatch, stall_mid_file):
    server = _SilentServer(stall_mid_file)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv(TIMEOUT, "1")
    outcome = {}

    def build():
        try:
            keras_metaformer.PoolFormerS12(weights="imagenet")
        except OSError as error:
            outcome["error"] = error

    # In a thread, so that a hang fails the test instead of stalling the run.
    thread = threading.Thread(target=build, daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(timeout=30)
    server.close()
    assert not thread.is_alive(), "the download hung"
    assert time.monotonic() - started < 15  # two tries (one retry) of 1 s each, and the build
    error = outcome["error"]
    assert isinstance(error, OSError)
    message = str(error)
    assert f"{server.url}{S12_URL_PATH} (the server did not answer within 1 s)" in message
    assert "PoolFormerS12(weights='/path/to/model.safetensors')" in message
    assert "raise KERAS_METAFORMER_DOWNLOAD_TIMEOUT (now 1 s)" in message
    _assert_one_exception(error)
    assert not [path for path in keras_home.rglob("*") if path.is_file()]  # no partial file


@pytest.mark.parametrize("value", ["soon", "0", "-3", "nan"])
def test_a_bad_download_timeout_is_named(keras_home, monkeypatch, value):
    monkeypatch.setenv(TIMEOUT, value)
    expected = f"{TIMEOUT} must be a positive number of seconds. Received: {TIMEOUT}='{value}'"
    with pytest.raises(ValueError, match=re.escape(expected)):
        keras_metaformer.PoolFormerS12(weights="imagenet")


def test_a_cached_file_of_another_architecture_names_itself_and_how_to_clear_it(weight_server, keras_home):
    cached = _cached_file(keras_home)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(save(tiny_state("poolformer_s12")))  # valid safetensors, reduced widths
    with pytest.raises(ValueError) as error:
        keras_metaformer.PoolFormerS12(weights="imagenet")
    message = str(error.value)
    url = weight_server.url_of(S12_URL_PATH)
    assert f"The weights file {cached} (from {url}) does not match model 'poolformer_s12'" in message
    assert f"delete it (`rm '{cached}'`) and build the model again" in message
    assert "Shape mismatches (" in message and "head.fc.bias: checkpoint (10,), model (1000,)" in message
    _assert_one_exception(error.value)
    assert cached.is_file() and weight_server.requests == []  # kept for the user to inspect; no download


def test_a_downloaded_file_of_another_architecture_is_dropped_from_the_cache(weight_server, keras_home):
    weight_server.files[S12_URL_PATH] = save(tiny_state("poolformer_s12"))
    with pytest.raises(ValueError, match=r"does not match model 'poolformer_s12'.*removed from the cache.*HF_ENDPOINT"):
        keras_metaformer.PoolFormerS12(weights="imagenet")
    assert not _cached_file(keras_home).exists()
    assert weight_server.requests == [S12_URL_PATH]


# --- Weight tags of the baselines ---------------------------------------------


def test_baseline_tags_carry_their_input_size_and_classes():
    config = keras_metaformer.get_pretrained_config("caformer_s18", "sail_in22k_ft_in1k_384")
    assert (config.input_size, config.crop_pct, config.num_classes) == ((384, 384), 1.0, 1000)
    assert keras_metaformer.get_pretrained_config("convformer_b36", "sail_in22k").num_classes == 21841
    assert keras_metaformer.available_weights("convformer_s18") == [
        "sail_in1k",
        "sail_in1k_384",
        "sail_in22k_ft_in1k",
        "sail_in22k_ft_in1k_384",
        "sail_in22k",
    ]
    assert keras_metaformer.available_weights("poolformerv2_m48") == ["sail_in1k"]
    assert config.url.endswith("/timm/caformer_s18.sail_in22k_ft_in1k_384/resolve/main/model.safetensors")


def test_a_tag_selects_its_input_size_and_class_count(keras_home):
    # The tag's checks run before the download, which fails offline.
    with pytest.raises(ValueError, match=r"21841-class head.*Received: classes=1000"):
        keras_metaformer.ConvFormerS18(weights="sail_in22k")
    with pytest.raises(OSError, match=r"caformer_s18\.sail_in1k_384"):
        keras_metaformer.CAFormerS18(weights="sail_in1k_384")


@pytest.mark.parametrize("builder", [keras_metaformer.IdentityFormerS12, keras_metaformer.RandFormerM48])
def test_imagenet_weights_of_authors_only_families_explain_the_converter(builder):
    with pytest.raises(
        ValueError, match=r"timm publishes no weights.*sail/dl/resolve/main/.*convert_authors_checkpoint.py"
    ):
        builder(weights="imagenet")


def test_authors_checkpoint_conversion_without_torch_tensors(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "convert", os.path.join(os.path.dirname(__file__), "..", "recipes", "convert_authors_checkpoint.py")
    )
    convert = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(convert)
    timm_state = tiny_state("randformer_s12")
    authors = {"module." + a: timm_state[t] for a, t in TIMM_KEYS["randformer_s12"]["authors_to_timm"].items()}
    state = convert.to_numpy_state({"model": authors})
    assert set(state) == {key.removeprefix("module.") for key in authors}
    model = keras_metaformer.load_timm_weights(tiny_model("randformer_s12"), state)
    _assert_matches_timm(model, reference("randformer_s12"))


# GMACs at 224x224 from the papers' tables (v1 table 1; baselines table).
PAPER_GMACS = {
    "poolformer_s12": 1.82,
    "poolformer_s24": 3.41,
    "poolformer_s36": 5.00,
    "poolformer_m36": 8.80,
    "poolformer_m48": 11.59,
    "convformer_s18": 3.9,
    "caformer_s18": 4.1,
    "convformer_b36": 22.6,
    "caformer_b36": 23.2,
}


@needs_tensorflow
@pytest.mark.parametrize("arch", sorted(PAPER_GMACS))
def test_mac_count_matches_the_papers_within_one_percent(arch):
    from keras_metaformer.macs import count_macs

    gmacs = count_macs(full_size_model(arch)) / 1e9
    # Within 1%, or within the table's rounding where it gives one decimal.
    rounding = 0.005 if arch.startswith("poolformer_") else 0.05
    assert abs(gmacs - PAPER_GMACS[arch]) <= max(0.01 * PAPER_GMACS[arch], rounding), gmacs
