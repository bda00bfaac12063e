"""Keras layers of the MetaFormer family.

Importing this package registers every layer as serializable under the
`keras_metaformer` package and every token mixer under its short name.
"""

from keras_metaformer.layers.block import MetaFormerBlock
from keras_metaformer.layers.drop_path import DropPath
from keras_metaformer.layers.layer_scale import LayerScale
from keras_metaformer.layers.mlp import Mlp
from keras_metaformer.layers.norms import NORMS, get_norm
from keras_metaformer.layers.patch_embedding import PatchEmbedding
from keras_metaformer.layers.pool_mixer import PoolMixer
from keras_metaformer.layers.token_mixers import (
    get_token_mixer,
    register_token_mixer,
    token_mixer_names,
)

__all__ = [
    "DropPath",
    "LayerScale",
    "MetaFormerBlock",
    "Mlp",
    "NORMS",
    "PatchEmbedding",
    "PoolMixer",
    "get_norm",
    "get_token_mixer",
    "register_token_mixer",
    "token_mixer_names",
]
