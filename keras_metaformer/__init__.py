"""keras_metaformer: the MetaFormer family of vision models for Keras 3.

PoolFormer (Yu et al., "MetaFormer is Actually What You Need for Vision",
CVPR 2022) as Keras layers and `keras.applications`-style builders, with
pretrained weights numerically identical to timm's.

Example:

    import keras_metaformer

    model = keras_metaformer.PoolFormerS12(weights="imagenet")
"""

from keras_metaformer import layers
from keras_metaformer import weights
from keras_metaformer.imagenet import decode_predictions
from keras_metaformer.imagenet import imagenet_classes
from keras_metaformer.layers import DropPath
from keras_metaformer.layers import LayerScale
from keras_metaformer.layers import MetaFormerBlock
from keras_metaformer.layers import Mlp
from keras_metaformer.layers import PatchEmbedding
from keras_metaformer.layers import PoolMixer
from keras_metaformer.models import MetaFormer
from keras_metaformer.models import PoolFormerM36
from keras_metaformer.models import PoolFormerM48
from keras_metaformer.models import PoolFormerS12
from keras_metaformer.models import PoolFormerS24
from keras_metaformer.models import PoolFormerS36
from keras_metaformer.preprocessing import resize_and_center_crop
from keras_metaformer.weights import PretrainedConfig
from keras_metaformer.weights import available_weights
from keras_metaformer.weights import get_pretrained_config
from keras_metaformer.weights import load_timm_weights

__version__ = "0.1.0"

__all__ = [
    "DropPath",
    "LayerScale",
    "MetaFormer",
    "MetaFormerBlock",
    "Mlp",
    "PatchEmbedding",
    "PoolFormerM36",
    "PoolFormerM48",
    "PoolFormerS12",
    "PoolFormerS24",
    "PoolFormerS36",
    "PoolMixer",
    "PretrainedConfig",
    "available_weights",
    "decode_predictions",
    "get_pretrained_config",
    "imagenet_classes",
    "layers",
    "load_timm_weights",
    "resize_and_center_crop",
    "weights",
]
