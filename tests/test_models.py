import inspect

import keras
import numpy as np
import pytest
from conftest import full_size_model

import keras_metaformer
from keras_metaformer.models import BUILDERS
from keras_metaformer.models import POOLFORMER_VARIANTS
from keras_metaformer.models.variants import architecture
from keras_metaformer.training import adamw

FAMILIES_WITH_S12 = ("poolformer", "poolformerv2", "identityformer", "randformer")


def tiny_model(**kwargs):
    arguments = dict(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), weights=None, classes=5)
    arguments.update(kwargs)
    return keras_metaformer.MetaFormer(**arguments)


# --- Builders: signature, names, parameter counts ----------------------------


def test_builders_share_one_signature_and_docstring_template():
    reference = inspect.signature(keras_metaformer.PoolFormerS12)
    expected = [
        "include_top",
        "include_preprocessing",
        "weights",
        "input_tensor",
        "input_shape",
        "pooling",
        "classes",
        "classifier_activation",
        "drop_path_rate",
        "gradient_checkpointing",
        "dtype",
        "name",
    ]
    assert list(reference.parameters) == expected
    assert len(BUILDERS) == 28
    for arch, builder in BUILDERS.items():
        signature = inspect.signature(builder)
        assert list(signature.parameters) == expected
        for parameter in expected:
            if parameter not in ("weights", "name"):
                assert signature.parameters[parameter].default == reference.parameters[parameter].default
        # Families without published timm weights default to random ones.
        has_weights = bool(keras_metaformer.available_weights(arch))
        assert signature.parameters["weights"].default == ("imagenet" if has_weights else None)
        assert signature.parameters["name"].default == arch
        assert getattr(keras_metaformer, builder.__name__) is builder
        title = builder.__name__[:-3] + "-" + builder.__name__[-3:]
        assert builder.__doc__.startswith(f"Builds {title}, optionally with pretrained weights.")
        assert f'get_pretrained_config("{arch}", tag)' in builder.__doc__


def test_variant_table_shapes_the_models():
    model = full_size_model("poolformer_s12")
    assert tuple(model.output.shape) == (None, 1000)
    config = POOLFORMER_VARIANTS["s12"]
    for stage, depth in enumerate(config.depths):
        block = model.get_layer(f"stage{stage}_block{depth - 1}")
        assert block.output.shape[-1] == config.dims[stage]
        assert block.layer_scale_init_value == config.layer_scale_init_value


def test_s12_parameter_count_is_the_papers():
    model = keras_metaformer.PoolFormerS12(weights=None, include_preprocessing=False)
    assert model.count_params() == 11_915_176


# --- Shapes --------------------------------------------------------------------


@pytest.mark.parametrize(
    "include_top, pooling, input_shape, expected",
    [
        (True, None, None, (None, 1000)),
        (True, None, (96, 128, 3), (None, 1000)),
        (False, None, None, (None, None, None, 512)),
        (False, None, (224, 224, 3), (None, 7, 7, 512)),
        (False, None, (32, 32, 3), (None, 1, 1, 512)),
        (False, None, (100, 67, 3), (None, 4, 3, 512)),
        (False, "avg", None, (None, 512)),
        (False, "max", (64, 64, 3), (None, 512)),
    ],
)
def test_s12_output_shapes(include_top, pooling, input_shape, expected):
    model = keras_metaformer.PoolFormerS12(
        weights=None, include_top=include_top, pooling=pooling, input_shape=input_shape
    )
    assert tuple(model.output.shape) == expected
    default = (224, 224, 3) if include_top else (None, None, 3)
    assert tuple(model.input.shape[1:]) == (input_shape or default)


def test_eager_outputs_match_symbolic_shapes_at_several_sizes():
    model = tiny_model(include_top=False)
    for size in [(32, 32), (45, 77), (64, 64)]:
        out = model.predict(np.zeros((2, *size, 3), "float32"), verbose=0)
        expected = [-(-s // 4) for s in size]  # stem: ceil(s / 4) for these sizes
        for _ in range(3):
            expected = [(s + 2 - 3) // 2 + 1 for s in expected]
        assert out.shape == (2, *expected, 32)


def test_softmax_head_and_logits_head():
    x = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype("float32")
    probabilities = tiny_model(input_shape=(32, 32, 3)).predict(x, verbose=0)
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, rtol=1e-5)
    logits = tiny_model(input_shape=(32, 32, 3), classifier_activation=None).predict(x, verbose=0)
    assert (logits < 0).any()


def test_input_tensor_is_used_as_the_model_input():
    tensor = keras.Input((64, 64, 3), name="my_images")
    model = tiny_model(input_tensor=tensor, include_top=False, pooling="avg")
    assert model.inputs[0] is tensor
    assert tuple(model.output.shape) == (None, 32)


def test_include_preprocessing_normalises_0_255_input():
    with_pre = tiny_model(input_shape=(32, 32, 3), classifier_activation=None)
    without = tiny_model(input_shape=(32, 32, 3), classifier_activation=None, include_preprocessing=False)
    for layer in without.layers:
        layer.set_weights(with_pre.get_layer(layer.name).get_weights())
    x = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(
        with_pre.predict(x, verbose=0),
        without.predict(((x / 255 - mean) / std).astype("float32"), verbose=0),
        atol=1e-5,
    )


def test_drop_path_rates_rise_linearly_over_all_blocks():
    model = tiny_model(drop_path_rate=0.4)
    blocks = [layer for layer in model.layers if "_block" in layer.name]
    rates = [block.drop_path_rate for block in blocks]
    np.testing.assert_allclose(rates, np.linspace(0, 0.4, len(blocks)))
    assert blocks[0].drop_path is None and blocks[-1].drop_path.rate == pytest.approx(0.4)


def test_ablation_knobs_reach_every_block():
    model = tiny_model(pool_size=5, norm="layer", activation="relu", mlp_ratio=2)
    for layer in model.layers:
        if "_block" in layer.name:
            assert layer.token_mixer.pool_size == 5
            assert isinstance(layer.norm1, keras.layers.LayerNormalization)
            assert layer.mlp.fc1.units == 2 * layer.output.shape[-1]
            assert layer.mlp.act.activation is keras.activations.relu


def test_layer_names_are_stable_and_hierarchical():
    names = [layer.name for layer in keras_metaformer.PoolFormerS12(weights=None).layers]
    assert names[:4] == ["images", "preprocessing", "stem", "stage0_block0"]
    assert "stage1_downsample" in names and "stage2_block5" in names
    assert names[-3:] == ["avg_pool", "head_norm", "predictions"]


# --- Training, mixed precision, saving ---------------------------------------


def test_fit_reduces_the_loss():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (16, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 5, 16)
    model = tiny_model(input_shape=(32, 32, 3), drop_path_rate=0.1)
    model.compile(adamw(model, 1e-3), "sparse_categorical_crossentropy")
    history = model.fit(x, y, epochs=8, batch_size=8, verbose=0)
    losses = history.history["loss"]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


@pytest.mark.parametrize("given", ["globally", "as dtype"])
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_forward_matches_float32(policy, given):
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    reference = tiny_model(input_shape=(32, 32, 3), classifier_activation=None)
    if given == "globally":
        keras.config.set_dtype_policy(policy)
        mixed = tiny_model(input_shape=(32, 32, 3), classifier_activation=None)
    else:
        mixed = tiny_model(input_shape=(32, 32, 3), classifier_activation=None, dtype=keras.DTypePolicy(policy))
        assert keras.config.dtype_policy().name == "float32"
    mixed.set_weights(reference.get_weights())
    out = mixed.predict(x, verbose=0)
    assert out.dtype == np.float32  # the head computes in float32
    # Every layer between the input and the head, and their sublayers, compute in the policy's dtype.
    inner = [sub for layer in mixed.layers[1:-1] for sub in layer._flatten_layers()]
    assert {layer.compute_dtype for layer in inner} == {policy.split("_")[1]}
    np.testing.assert_allclose(out, reference.predict(x, verbose=0), atol=0.1)


def test_builders_take_a_dtype_policy_and_name_a_bad_one():
    for model in (
        tiny_model(
            token_mixers=("sepconv", "random", "attention", "pool"),
            norm="layer",
            input_shape=(32, 32, 3),
            include_top=False,
            dtype="mixed_bfloat16",
        ),
        keras_metaformer.PoolFormerS12(weights=None, include_top=False, dtype="mixed_bfloat16"),
    ):
        assert {sub.compute_dtype for layer in model.layers[1:] for sub in layer._flatten_layers()} == {"bfloat16"}
        assert {v.dtype for v in model.weights if "seed" not in v.path} == {"float32"}
    with pytest.raises(ValueError, match=r"`dtype` must be a dtype policy or its name.*Received: dtype='float99'"):
        tiny_model(dtype="float99")


def test_keras_save_and_load_round_trip(tmp_path):
    model = tiny_model(drop_path_rate=0.2, pool_size=5, input_shape=(48, 48, 3))
    x = np.random.default_rng(0).uniform(0, 255, (2, 48, 48, 3)).astype("float32")
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_array_equal(restored.predict(x, verbose=0), model.predict(x, verbose=0))
    assert [layer.name for layer in restored.layers] == [layer.name for layer in model.layers]
    assert restored.get_layer("stage3_block0").drop_path.rate == pytest.approx(0.2)


def test_s12_keras_save_and_load_round_trip(tmp_path):
    model = keras_metaformer.PoolFormerS12(weights=None, input_shape=(64, 64, 3))
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    model.save(tmp_path / "s12.keras")
    restored = keras.saving.load_model(tmp_path / "s12.keras")
    np.testing.assert_array_equal(restored.predict(x, verbose=0), model.predict(x, verbose=0))


# --- Bad input -----------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"weights": "imagenet21k"},
            r"Invalid `weights`: 'imagenet21k'.*Expected one of \[None, 'imagenet', 'sail_in1k'\]",
        ),
        ({"weights": "/no/such/file.safetensors"}, r"neither a known weight name nor an existing file"),
        ({"classes": 10}, r"1000-class head.*`classes` must be 1000. Received: classes=10.*include_top=False"),
        (
            {"classifier_activation": "sigmoid"},
            r"must be None \(logits\) or 'softmax'. Received: classifier_activation='sigmoid'",
        ),
        (
            {"input_shape": (224, 224, 1), "include_preprocessing": False},
            r"expect 3 input channels \(RGB\). Received: input_shape=\(224, 224, 1\) with include_preprocessing=False",
        ),
        ({"input_shape": (224, 224, 5)}, r"Received: 5 channels \(input_shape=\(224, 224, 5\)\)"),
        ({"input_shape": (31, 224, 3), "weights": None}, r"at least 32x32.*Received: input_shape=\(31, 224, 3\)"),
        ({"include_top": False, "input_shape": (64, 16, 3), "weights": None}, r"at least 32x32"),
        (
            {"pooling": "sum", "include_top": False},
            r"`pooling` must be one of \[None, 'avg', 'max'\].*Received: pooling='sum'",
        ),
        (
            {"input_shape": (224, 224), "weights": None},
            r"\(height, width, channels\).*Received: input_shape=\(224, 224\)",
        ),
    ],
)
def test_bad_arguments_raise_clear_errors_before_any_download(kwargs, message):
    # HF_ENDPOINT points at a closed port: reaching the download would raise
    # an OSError, not the expected ValueError.
    with pytest.raises(ValueError, match=message):
        keras_metaformer.PoolFormerS12(**kwargs)


def test_pretrained_weights_on_the_generic_builder_are_refused():
    with pytest.raises(ValueError, match="not published for this model"):
        tiny_model(weights="imagenet")


def test_mismatched_stage_arguments_are_refused():
    with pytest.raises(ValueError, match="one entry per stage"):
        keras_metaformer.MetaFormer(depths=(1, 1), dims=(8, 16, 32), weights=None)
    with pytest.raises(ValueError, match="one value or one per stage"):
        keras_metaformer.MetaFormer(depths=(1, 1), dims=(8, 16), token_mixers=["pool"], weights=None)


def test_generic_builder_composes_the_papers_hybrids():
    model = keras_metaformer.MetaFormer(
        depths=(1, 1, 2, 1),
        dims=(16, 32, 64, 96),
        token_mixers=["pool", "pool", "attention", "attention"],
        norm=["group", "group", "layer", "layer"],
        weights=None,
        classes=7,
        input_shape=(64, 64, 3),
    )
    mixers = {layer.name: type(layer.token_mixer).__name__ for layer in model.layers if "_block" in layer.name}
    assert mixers["stage1_block0"] == "PoolMixer" and mixers["stage2_block1"] == "AttentionMixer"
    assert isinstance(model.get_layer("stage3_block0").norm1, keras.layers.LayerNormalization)
    assert model.get_layer("stage3_block0").token_mixer.num_heads == 3
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    model.compile(keras.optimizers.SGD(0.01), "sparse_categorical_crossentropy")
    history = model.fit(x, np.array([1, 2]), verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    restored.set_weights(model.get_weights())
    np.testing.assert_allclose(restored.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


@pytest.mark.parametrize("family", ["poolformerv2", "randformer", "convformer", "caformer"])
def test_baseline_families_train_and_round_trip(family, tmp_path):
    """Each family's architecture, at reduced widths and depths for speed."""
    arguments = architecture(family, "s12" if family in FAMILIES_WITH_S12 else "s18")
    arguments.update(depths=(1, 1, 2, 1), dims=(8, 16, 32, 64), drop_path_rate=0.1)
    model = keras_metaformer.MetaFormer(**arguments, weights=None, classes=3, input_shape=(64, 64, 3))
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    model.compile(keras.optimizers.SGD(0.01), "sparse_categorical_crossentropy")
    assert np.isfinite(model.fit(x, np.array([0, 2]), verbose=0).history["loss"]).all()
    model.save(tmp_path / "model.keras")
    restored = keras.saving.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(restored.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_randformer_needs_its_input_size():
    with pytest.raises(ValueError, match="height x width = num_tokens"):
        keras_metaformer.RandFormerS12(weights=None, include_top=False)
