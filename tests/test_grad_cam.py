import importlib.util
import os
import re

import keras
import numpy as np
import pytest

import keras_metaformer
from keras_metaformer.grad_cam import grad_cam


def test_grad_cam_matches_finite_differences():
    """Channel weights are mean gradients; the model pools globally, so each
    equals (S(f + eps on channel k) - S(f - eps on channel k)) / (2 eps HW)."""
    model = keras_metaformer.MetaFormer(
        depths=(1, 1, 1, 1),
        dims=(8, 16, 24, 32),
        classes=4,
        input_shape=(96, 96, 3),
        classifier_activation=None,
    )
    images = np.random.default_rng(0).uniform(0, 255, (1, 96, 96, 3)).astype("float32")
    heatmaps, classes = grad_cam(model, images, class_index=2)
    assert classes.tolist() == [2] and heatmaps.shape == (1, 3, 3)

    layer = model.get_layer("stage3_block0")
    features = keras.ops.convert_to_numpy(keras.Model(model.input, layer.output)(images)).astype("float64")
    head_input = keras.Input((3, 3, 32))
    x = head_input
    for later in model.layers[model.layers.index(layer) + 1 :]:
        x = later(x)
    head = keras.Model(head_input, x)

    eps, positions = 1e-2, 9
    steps = eps * np.eye(32).reshape(32, 1, 1, 32)  # one channel at a time
    perturbed = np.concatenate([features + steps, features - steps]).astype("float32")
    scores = keras.ops.convert_to_numpy(head(perturbed))[:, 2].astype("float64")
    weights = (scores[:32] - scores[32:]) / (2 * eps * positions)
    expected = np.maximum((features[0] * weights).sum(-1), 0)
    expected /= expected.max()
    np.testing.assert_allclose(heatmaps[0], expected, atol=2e-2)


def test_grad_cam_defaults_to_the_top_class_and_stays_in_range():
    model = keras_metaformer.MetaFormer(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), classes=5, input_shape=(64, 64, 3))
    images = np.random.default_rng(1).uniform(0, 255, (3, 64, 64, 3)).astype("float32")
    heatmaps, classes = grad_cam(model, images)
    np.testing.assert_array_equal(classes, model.predict(images, verbose=0).argmax(-1))
    assert heatmaps.min() >= 0 and heatmaps.max() <= 1 + 1e-6


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"class_index": 5}, r"`class_index` must be in \[0, 5\), the model's classes. Received: class_index=5"),
        ({"class_index": -1}, r"`class_index` must be in \[0, 5\)"),
        ({"class_index": [0, 1, 2]}, r"`class_index` must be an int or 2 ints, one per image"),
        ({"class_index": 1.5}, r"`class_index` must be an int or 2 ints"),
        ({"layer_name": "stage9_block0"}, r"`layer_name` must name a layer of model .*'stage3_block0'"),
    ],
)
def test_grad_cam_refuses_classes_and_layers_the_model_lacks(kwargs, message):
    model = keras_metaformer.MetaFormer(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), classes=5, input_shape=(64, 64, 3))
    with pytest.raises(ValueError, match=message):
        grad_cam(model, np.zeros((2, 64, 64, 3), "float32"), **kwargs)


def test_grad_cam_takes_numpy_class_indices():
    model = keras_metaformer.MetaFormer(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), classes=5, input_shape=(64, 64, 3))
    _, classes = grad_cam(model, np.zeros((2, 64, 64, 3), "float32"), class_index=np.array([4, 0]))
    assert classes.tolist() == [4, 0]


def test_grad_cam_recipe_writes_an_overlay_with_a_colour_bar_and_a_caption(tmp_path):
    from PIL import Image

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes", "grad_cam.py")
    spec = importlib.util.spec_from_file_location("grad_cam_recipe", path)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    output = tmp_path / "overlay.png"
    heatmap, figure = recipe.main(["--weights", "none", "--output", str(output)])
    assert heatmap.shape == (7, 7)
    image, colour_bar = figure.axes
    assert colour_bar.get_label() == "<colorbar>"
    assert colour_bar.get_ylabel() == "Grad-CAM heat: evidence for the class (1 = strongest)"
    (caption,) = [text.get_text() for text in figure.texts]
    assert re.fullmatch(
        # Random weights pick any class; some names hold an apostrophe ("potter's wheel").
        r"Grad-CAM for class '.+' \(n\d{8}\), p=[01]\.\d\d\n"
        r"layer stage3_block1 of poolformer_s12\nrandom weights \(--weights none\)",
        caption,
    ), caption
    # The photo, at the model's input size, and the heat over it.
    assert image.images[0].get_array().shape == (224, 224, 3)
    assert image.images[1].get_array().shape == (224, 224)
    with Image.open(output) as written:
        assert written.format == "PNG" and written.info["Title"] == caption
