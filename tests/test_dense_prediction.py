"""Pyramid outputs and the keras-cv backbone adapter."""

import importlib.util
import os
import subprocess
import sys

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
    spec = importlib.util.spec_from_file_location(name, os.path.join(RECIPES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("recipe", ["detect_shapes", "segment_shapes"])
def test_recipe_smoke_mode_trains_a_keras_cv_model(recipe, tmp_path):
    history = _recipe(recipe).main(["--smoke", "--output", str(tmp_path)])
    assert np.isfinite(history.history["loss"]).all()
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
