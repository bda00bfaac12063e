"""Pretrained weights: tags, downloads and conversion from timm checkpoints."""

from keras_metaformer.weights.pretrained_configs import PRETRAINED_CONFIGS
from keras_metaformer.weights.pretrained_configs import PretrainedConfig
from keras_metaformer.weights.pretrained_configs import available_weights
from keras_metaformer.weights.pretrained_configs import get_pretrained_config
from keras_metaformer.weights.timm_conversion import authors_to_timm_keys
from keras_metaformer.weights.timm_conversion import load_timm_weights
from keras_metaformer.weights.timm_conversion import read_checkpoint
from keras_metaformer.weights.timm_conversion import timm_key_map

__all__ = [
    "PRETRAINED_CONFIGS",
    "PretrainedConfig",
    "authors_to_timm_keys",
    "available_weights",
    "get_pretrained_config",
    "load_timm_weights",
    "read_checkpoint",
    "timm_key_map",
]
