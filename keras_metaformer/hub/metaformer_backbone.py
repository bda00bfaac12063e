"""`MetaFormerBackbone`: any MetaFormer as a keras-hub feature-pyramid backbone."""

import inspect

import keras
import keras_hub

from keras_metaformer.models.metaformer import MetaFormer
from keras_metaformer.models.metaformer import build_metaformer
from keras_metaformer.models.metaformer import pyramid_layer_names
from keras_metaformer.models.variants import FAMILIES
from keras_metaformer.models.variants import all_variants
from keras_metaformer.models.variants import architecture as variant_architecture

# `keras_metaformer.MetaFormer`'s arguments that shape the backbone, with
# their defaults; the rest belong to the head, the weights or the model.
_NOT_ARCHITECTURE = (
    "head",
    "drop_path_rate",
    "include_top",
    "include_preprocessing",
    "weights",
    "input_tensor",
    "input_shape",
    "pooling",
    "classes",
    "classifier_activation",
    "dtype",
    "name",
)
_PARAMETERS = inspect.signature(MetaFormer).parameters
ARCHITECTURE_ARGUMENTS = tuple(name for name in _PARAMETERS if name not in _NOT_ARCHITECTURE)
_DEFAULTS = {
    name: _PARAMETERS[name].default
    for name in ARCHITECTURE_ARGUMENTS
    if _PARAMETERS[name].default is not inspect.Parameter.empty
}


# timm's names of the variant table's architectures, e.g. "caformer_s18".
ARCHITECTURES = {f"{family}_{size}": (family, size) for family, size in all_variants()}


def split_architecture(name):
    """`(family, size)` of a timm architecture name such as `"caformer_s18"`, or a `ValueError`."""
    if name not in ARCHITECTURES:
        raise ValueError(f"Unknown MetaFormer architecture {name!r}. Expected one of: {', '.join(ARCHITECTURES)}.")
    return ARCHITECTURES[name]


def classifier_head(architecture):
    """timm's head for `architecture`: the baselines' MLP head for ConvFormer and CAFormer, else a Dense layer."""
    if architecture is None:
        return "linear"
    family, _ = split_architecture(architecture)
    return FAMILIES[family].architecture.get("head", "linear")


@keras.saving.register_keras_serializable(package="keras_metaformer")
class MetaFormerBackbone(keras_hub.models.FeaturePyramidBackbone):
    """A MetaFormer without its head, as a keras-hub backbone.

    The backbone takes images already normalised with the ImageNet mean and
    standard deviation (a `MetaFormerImageConverter` does that) and returns
    the last feature map, at stride 32. `pyramid_outputs` gives the four
    stage outputs `P2`-`P5` (strides 4-32), for keras-hub's detectors and
    segmenters. Layer names and weights are those of the
    `keras_metaformer` builders, so timm checkpoints load into it.

    Args:
        architecture: a timm architecture name (`"poolformer_s12"`,
            `"caformer_s18"`, ...) whose depths, widths and mixers to use,
            or `None` to give them all below.
        depths, dims, token_mixers, pool_size, mlp_ratio, activation, norm,
            norm_epsilon, norm_use_bias, use_bias, layer_scale_init_value,
            res_scale_init_value, downsample_norm: as for
            `keras_metaformer.MetaFormer`. Given with `architecture`, they
            replace its values (timm's `model_args`).
        image_shape: `(height, width, channels)`; `None` for a variable
            height or width.
        drop_path_rate: stochastic depth of the last block.
        dtype: dtype policy of every layer, e.g. `"mixed_bfloat16"`.

    Example:

    >>> import numpy as np
    >>> from keras_metaformer.hub import MetaFormerBackbone
    >>> backbone = MetaFormerBackbone("poolformer_s12", dims=(8, 16, 24, 32))
    >>> features = backbone.predict(np.zeros((1, 64, 64, 3)), verbose=0)
    >>> features.shape, sorted(backbone.pyramid_outputs)
    ((1, 2, 2, 32), ['P2', 'P3', 'P4', 'P5'])
    """

    def __init__(
        self,
        architecture=None,
        *,
        image_shape=(None, None, 3),
        drop_path_rate=0.0,
        dtype=None,
        **kwargs,
    ):
        given = {name: kwargs.pop(name) for name in ARCHITECTURE_ARGUMENTS if name in kwargs}
        if architecture is not None:
            arguments = {**_DEFAULTS, **variant_architecture(*split_architecture(architecture))}
            arguments.pop("head")
        else:
            missing = [name for name in ("depths", "dims") if name not in given]
            if missing:
                raise ValueError(
                    "MetaFormerBackbone needs an `architecture` (e.g. 'poolformer_s12') or explicit "
                    f"`depths` and `dims`. Received neither, and no {' or '.join(missing)}."
                )
            arguments = dict(_DEFAULTS)
        arguments.update(given)
        model = build_metaformer(
            arch=None,
            **arguments,
            head="linear",
            drop_path_rate=drop_path_rate,
            include_top=False,
            include_preprocessing=False,
            weights=None,
            input_tensor=None,
            input_shape=image_shape,
            pooling=None,
            classes=None,
            classifier_activation=None,
            dtype=dtype,
            name="metaformer",
            builder_name="MetaFormerBackbone",
        )
        super().__init__(inputs=model.input, outputs=model.output, dtype=dtype, **kwargs)
        self.pyramid_outputs = {
            level: self.get_layer(name).output for level, name in pyramid_layer_names(model).items()
        }
        self.architecture = architecture
        self.image_shape = tuple(model.inputs[0].shape[1:])
        self.drop_path_rate = drop_path_rate
        self.architecture_arguments = {name: _plain(value) for name, value in arguments.items()}

    def get_config(self):
        config = super().get_config()
        config.update(
            architecture=self.architecture,
            image_shape=self.image_shape,
            drop_path_rate=self.drop_path_rate,
            **self.architecture_arguments,
        )
        return config


def _plain(value):
    """Tuples as lists, so that a config survives a JSON round trip unchanged."""
    return list(value) if isinstance(value, tuple) else value
