"""Keras layers of the MetaFormer family.

Importing this package registers every layer as serializable under the
`keras_metaformer` package and every token mixer under its short name.
"""

from keras_metaformer.layers.activations import StarReLU
from keras_metaformer.layers.activations import exact_gelu
from keras_metaformer.layers.activations import squared_relu
from keras_metaformer.layers.attention_mixer import AttentionMixer
from keras_metaformer.layers.block import MetaFormerBlock
from keras_metaformer.layers.drop_path import DropPath
from keras_metaformer.layers.identity_mixer import IdentityMixer
from keras_metaformer.layers.layer_scale import LayerScale
from keras_metaformer.layers.mlp import Mlp
from keras_metaformer.layers.mlp_head import MlpHead
from keras_metaformer.layers.norms import NORMS
from keras_metaformer.layers.norms import GroupNormalization
from keras_metaformer.layers.norms import get_norm
from keras_metaformer.layers.patch_embedding import PatchEmbedding
from keras_metaformer.layers.pool_mixer import PoolMixer
from keras_metaformer.layers.random_mixer import RandomMixer
from keras_metaformer.layers.sepconv_mixer import SepConvMixer
from keras_metaformer.layers.to_rgb import ToRGB
from keras_metaformer.layers.token_mixers import get_token_mixer
from keras_metaformer.layers.token_mixers import register_token_mixer
from keras_metaformer.layers.token_mixers import token_mixer_names

# timm's `Scale`: the residual scale of the baselines is the same operation
# as the layer scale (a learnable per-channel vector), under another name.
Scale = LayerScale

__all__ = [
    "NORMS",
    "AttentionMixer",
    "DropPath",
    "GroupNormalization",
    "IdentityMixer",
    "LayerScale",
    "MetaFormerBlock",
    "Mlp",
    "MlpHead",
    "PatchEmbedding",
    "PoolMixer",
    "RandomMixer",
    "Scale",
    "SepConvMixer",
    "StarReLU",
    "ToRGB",
    "exact_gelu",
    "get_norm",
    "get_token_mixer",
    "register_token_mixer",
    "squared_relu",
    "token_mixer_names",
]
