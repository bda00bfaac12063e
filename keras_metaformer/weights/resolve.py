"""The `weights=` argument of the builders: checked first, loaded last."""

import os

from keras_metaformer.weights.download import fetch_pretrained_state
from keras_metaformer.weights.pretrained_configs import AUTHORS_ONLY_WEIGHTS
from keras_metaformer.weights.pretrained_configs import IMAGENET_ALIAS
from keras_metaformer.weights.pretrained_configs import PretrainedConfig
from keras_metaformer.weights.pretrained_configs import available_weights
from keras_metaformer.weights.pretrained_configs import get_pretrained_config
from keras_metaformer.weights.timm_conversion import load_timm_weights

_CHECKPOINT_SUFFIXES = (".safetensors", ".npz")
_KERAS_SUFFIXES = (".weights.h5", ".keras")


def resolve_weights(weights, arch):
    """Returns `None`, a `PretrainedConfig` or a file path for `weights`.

    Raises a `ValueError` naming every accepted value when `weights` is none
    of: `None`, `"imagenet"`, a weight tag of `arch`, or an existing file.
    """
    if weights is None:
        return None
    if isinstance(weights, os.PathLike):
        weights = os.fspath(weights)
    tags = available_weights(arch) if arch else []
    if isinstance(weights, str):
        if tags and (weights == IMAGENET_ALIAS or weights in tags):
            return get_pretrained_config(arch, weights)
        if os.path.isfile(weights):
            if not weights.endswith(_CHECKPOINT_SUFFIXES + _KERAS_SUFFIXES):
                raise ValueError(
                    f"Unsupported weights file {weights!r}. Expected a timm "
                    "`.safetensors` file, an `.npz` archive, or a Keras "
                    "`.weights.h5` / `.keras` file."
                )
            return weights
    if weights == IMAGENET_ALIAS and arch in AUTHORS_ONLY_WEIGHTS:
        raise ValueError(
            f"timm publishes no weights for {arch}, so weights='imagenet' cannot "
            f"be downloaded. The authors' checkpoint is a PyTorch pickle, "
            f"{AUTHORS_ONLY_WEIGHTS[arch]}: download it, convert it with "
            "`python recipes/convert_authors_checkpoint.py FILE.pth OUT.safetensors` "
            "(needs torch), and pass weights='OUT.safetensors'."
        )
    names = [None, IMAGENET_ALIAS, *tags] if tags else [None]
    raise ValueError(
        f"Invalid `weights`: {weights!r} is neither a known weight name nor "
        f"an existing file. Expected one of {names} or the path of a weights "
        "file (timm `.safetensors`, `.npz`, Keras `.weights.h5`)."
        + ("" if tags else f" Pretrained weights are not published for {arch or 'this model'}.")
    )


def fetch_weights(resolved, builder_name):
    """Downloads pretrained weights, if `resolved` names them.

    Called before the model is built, so that a network error or a corrupt
    download costs no build time. Returns `None`, a path, or a checkpoint
    as `{key: array}`.
    """
    if isinstance(resolved, PretrainedConfig):
        return fetch_pretrained_state(resolved, builder_name)
    return resolved


def load_weights(model, weights):
    """Loads what `fetch_weights` returned into a freshly built model."""
    if weights is None:
        return
    if isinstance(weights, str) and weights.endswith(_KERAS_SUFFIXES):
        model.load_weights(weights)
    else:
        load_timm_weights(model, weights)
