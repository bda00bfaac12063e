"""Pyramid outputs, the keras-cv backbone adapter, and keras-hub's detector and segmenter on a MetaFormer."""

import importlib.util
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_metaformer
from keras_metaformer.keras_cv_backbone import KerasCVBackbone

RECIPES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes")


def _small(**kwargs):
    return keras_metaformer.MetaFormer(
        depths=(1, 1, 1, 1), dims=(16, 32, 48, 64), include_top=False, weights=None, **kwargs
    )


@pytest.mark.parametrize("name", ["PoolFormerS12", "ConvFormerS18", "CAFormerS18"])
def test_pyramid_outputs_have_strides_4_to_32(name):
    model = getattr(keras_metaformer, name)(weights=None, include_top=False, input_shape=(96, 128, 3))
    dims = dict(zip(["P2", "P3", "P4", "P5"], _dims(name)))
    assert list(model.pyramid_outputs) == ["P2", "P3", "P4", "P5"]
    for level, tensor in model.pyramid_outputs.items():
        stride = 2 ** int(level[1])
        assert tuple(tensor.shape) == (None, 96 // stride, 128 // stride, dims[level])
    # Reloaded models lose the attribute; the function recomputes it.
    recomputed = keras_metaformer.pyramid_outputs(model)
    assert {k: v.shape for k, v in recomputed.items()} == {k: v.shape for k, v in model.pyramid_outputs.items()}


def _dims(name):
    family, size = name[:-3].lower(), name[-3:].lower()
    return keras_metaformer.models.FAMILIES[family].sizes[size].dims


def test_keras_cv_backbone_names_its_pyramid_levels_and_round_trips():
    backbone = KerasCVBackbone(_small(input_shape=(None, None, 3)))
    assert backbone.pyramid_level_inputs == {
        "P2": "stage0_block0",
        "P3": "stage1_block0",
        "P4": "stage2_block0",
        "P5": "stage3_block0",
    }
    restored = KerasCVBackbone.from_config(backbone.get_config())
    restored.set_weights(backbone.get_weights())
    x = np.random.default_rng(0).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(restored.predict(x, verbose=0), backbone.predict(x, verbose=0), atol=1e-6)


def test_keras_cv_backbone_needs_feature_maps():
    with pytest.raises(ValueError, match="include_top=False and pooling=None"):
        KerasCVBackbone(_small(pooling="avg"))


def _recipe(name):
    """recipes/<name>.py, which may import its sibling recipes."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(RECIPES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, RECIPES)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(RECIPES)
    return module


@pytest.fixture
def keras_hub():
    """keras-hub, or a skip where it is not installed (it is an optional dependency)."""
    return pytest.importorskip("keras_hub")


def _tiny_hub_backbone():
    from keras_metaformer.hub import MetaFormerBackbone
    from keras_metaformer.hub.metaformer_image_converter import normalisation

    backbone = MetaFormerBackbone(depths=(1, 1, 1, 1), dims=(16, 32, 48, 64), image_shape=(64, 64, 3))
    return backbone, normalisation()


def _fits_one_step(task, x, y, **compile_arguments):
    """Trains `task` one step on `(x, y)`; checks that the loss is finite and that every layer learned."""
    # SGD: Adam's slots double the time to trace a step, and one step does not need them.
    task.compile(optimizer=keras.optimizers.SGD(0.01), **compile_arguments)
    before = [keras.ops.convert_to_numpy(weight) for weight in task.trainable_weights]
    history = task.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all() and len(history.history["loss"]) == 1
    # Per layer ("stem", "stage0_block0", ..., the task's own), whether any of its weights moved.
    # Not every weight: behind a layer scale of 1e-5, a block's first norm gets updates that
    # float32 rounds away.
    moved = {}
    for weight, value in zip(task.trainable_weights, before):
        layer = weight.path.split("/")[0]
        moved[layer] = moved.get(layer, False) or not np.array_equal(keras.ops.convert_to_numpy(weight), value)
    assert [layer for layer, changed in moved.items() if not changed] == []
    assert {"stem", "stage0_block0", "stage3_block0"} < set(moved)  # the MetaFormer trains with the task


def test_keras_hub_retinanet_on_a_metaformer_trains_a_step(keras_hub):
    encoder, (scale, offset) = _tiny_hub_backbone()
    detector = keras_hub.models.RetinaNetObjectDetector(
        backbone=keras_hub.models.RetinaNetBackbone(
            image_encoder=encoder, min_level=3, max_level=7, use_p5=False, image_shape=(64, 64, 3)
        ),
        num_classes=3,
        bounding_box_format="xywh",
        preprocessor=keras_hub.models.RetinaNetObjectDetectorPreprocessor(
            keras_hub.layers.RetinaNetImageConverter(scale=scale, offset=offset, bounding_box_format="xywh")
        ),
    )
    images, boxes, classes, _ = _recipe("synthetic_shapes").make_shapes(2, size=64)
    _fits_one_step(detector, images, {"boxes": boxes, "labels": classes})
    # Nine anchors per position of levels P3-P7 on a 64x64 image: 8x8 + 4x4 + 2x2 + 1x1 + 1x1.
    assert detector.output["cls_logits"].shape == (None, 86 * 9, 3)


def test_keras_hub_deeplab_v3_plus_on_a_metaformer_trains_a_step(keras_hub):
    encoder, (scale, offset) = _tiny_hub_backbone()
    segmenter = keras_hub.models.DeepLabV3ImageSegmenter(
        backbone=keras_hub.models.DeepLabV3Backbone(
            image_encoder=encoder,
            spatial_pyramid_pooling_key="P5",
            upsampling_size=8,
            dilation_rates=[6, 12, 18],
            low_level_feature_key="P2",
            image_shape=(64, 64, 3),
        ),
        num_classes=4,
        preprocessor=keras_hub.models.DeepLabV3ImageSegmenterPreprocessor(
            keras_hub.layers.DeepLabV3ImageConverter(scale=scale, offset=offset)
        ),
    )
    images, _, _, masks = _recipe("synthetic_shapes").make_shapes(2, size=64)
    _fits_one_step(segmenter, images, masks, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert segmenter.output.shape == (None, 64, 64, 4)


def test_shapes_recipes_copy_a_builders_weights_into_a_hub_backbone(keras_hub):
    # How the recipes give a MetaFormerBackbone the ImageNet weights of a builder's model.
    from keras_metaformer.hub import MetaFormerBackbone

    copy_weights = _recipe("shapes_setup").copy_weights
    source = _small(include_preprocessing=False, input_shape=(64, 64, 3))
    target = MetaFormerBackbone(depths=(1, 1, 1, 1), dims=(16, 32, 48, 64), image_shape=(64, 64, 3))
    assert not np.array_equal(target.get_layer("stem").get_weights()[0], source.get_layer("stem").get_weights()[0])
    copy_weights(source, target)
    assert [w.path for w in target.weights] == [w.path for w in source.weights]
    for copied, original in zip(target.weights, source.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(copied), keras.ops.convert_to_numpy(original))
    deeper = keras_metaformer.MetaFormer(
        depths=(2, 1, 1, 1), dims=(16, 32, 48, 64), include_top=False, include_preprocessing=False, weights=None
    )
    with pytest.raises(ValueError, match=r"their layers differ.*Only in 'metaformer': \['stage0_block1'\]"):
        copy_weights(deeper, target)


@pytest.mark.parametrize("engine", ["keras-hub", "keras-cv"])
@pytest.mark.parametrize("recipe", ["detect_shapes", "segment_shapes"])
def test_recipe_smoke_mode_trains_a_model(recipe, engine, tmp_path):
    if engine == "keras-hub":
        pytest.importorskip("keras_hub")
    history = _recipe(recipe).main(["--smoke", "--engine", engine, "--output", str(tmp_path)])
    assert np.isfinite(history.history["loss"]).all()
    if recipe == "detect_shapes":
        # The heads start at RetinaNet's prior: a first loss near 1, not keras-hub's thousands.
        assert history.history["loss"][0] < 10
    assert (tmp_path / "history.csv").read_text().startswith("epoch,loss")
    assert any(p.name.endswith(".weights.h5") for p in tmp_path.iterdir())


def test_the_backbone_module_names_the_install_when_keras_cv_is_missing():
    # A fresh interpreter in which `import keras_cv` fails, as where it is not installed.
    code = (
        "import sys; sys.modules['keras_cv'] = None\n"
        "try:\n"
        "    import keras_metaformer.keras_cv_backbone\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert 'needs keras-cv, which is not installed: `pip install "keras-metaformer[data]"`' in result.stdout
