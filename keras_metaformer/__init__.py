"""keras_metaformer: the MetaFormer family of vision models for Keras 3.

PoolFormer (Yu et al., "MetaFormer is Actually What You Need for Vision",
CVPR 2022) and the MetaFormer baselines (PoolFormerV2, IdentityFormer,
RandFormer, ConvFormer, CAFormer; "MetaFormer Baselines for Vision", TPAMI
2024) as Keras layers and `keras.applications`-style builders, with
pretrained weights numerically identical to timm's.

Example:

    import keras_metaformer

    model = keras_metaformer.PoolFormerS12(weights="imagenet")
"""

from keras.backend import backend as _keras_backend

from keras_metaformer import layers
from keras_metaformer import malloc as _malloc
from keras_metaformer import weights
from keras_metaformer.imagenet import decode_predictions
from keras_metaformer.imagenet import imagenet_classes
from keras_metaformer.layers import AttentionMixer
from keras_metaformer.layers import DropPath
from keras_metaformer.layers import IdentityMixer
from keras_metaformer.layers import LayerScale
from keras_metaformer.layers import MetaFormerBlock
from keras_metaformer.layers import Mlp
from keras_metaformer.layers import MlpHead
from keras_metaformer.layers import PatchEmbedding
from keras_metaformer.layers import PoolMixer
from keras_metaformer.layers import RandomMixer
from keras_metaformer.layers import SepConvMixer
from keras_metaformer.layers import StarReLU
from keras_metaformer.layers import ToRGB
from keras_metaformer.macs import count_macs
from keras_metaformer.models import BUILDERS
from keras_metaformer.models import CAFormerB36
from keras_metaformer.models import CAFormerM36
from keras_metaformer.models import CAFormerS18
from keras_metaformer.models import CAFormerS36
from keras_metaformer.models import ConvFormerB36
from keras_metaformer.models import ConvFormerM36
from keras_metaformer.models import ConvFormerS18
from keras_metaformer.models import ConvFormerS36
from keras_metaformer.models import IdentityFormerM36
from keras_metaformer.models import IdentityFormerM48
from keras_metaformer.models import IdentityFormerS12
from keras_metaformer.models import IdentityFormerS24
from keras_metaformer.models import IdentityFormerS36
from keras_metaformer.models import MetaFormer
from keras_metaformer.models import PoolFormerM36
from keras_metaformer.models import PoolFormerM48
from keras_metaformer.models import PoolFormerS12
from keras_metaformer.models import PoolFormerS24
from keras_metaformer.models import PoolFormerS36
from keras_metaformer.models import PoolFormerV2M36
from keras_metaformer.models import PoolFormerV2M48
from keras_metaformer.models import PoolFormerV2S12
from keras_metaformer.models import PoolFormerV2S24
from keras_metaformer.models import PoolFormerV2S36
from keras_metaformer.models import RandFormerM36
from keras_metaformer.models import RandFormerM48
from keras_metaformer.models import RandFormerS12
from keras_metaformer.models import RandFormerS24
from keras_metaformer.models import RandFormerS36
from keras_metaformer.models import pyramid_outputs
from keras_metaformer.preprocessing import load_image
from keras_metaformer.preprocessing import resize_and_center_crop
from keras_metaformer.weights import PretrainedConfig
from keras_metaformer.weights import available_weights
from keras_metaformer.weights import get_pretrained_config
from keras_metaformer.weights import load_timm_weights

# Before any model is built: JAX's CPU client allocates through malloc, and
# glibc's returns each large freed block to the kernel (see `malloc`).
_malloc.apply_import_default(_keras_backend())

__version__ = "0.1.0"

__all__ = [
    "BUILDERS",
    "AttentionMixer",
    "CAFormerB36",
    "CAFormerM36",
    "CAFormerS18",
    "CAFormerS36",
    "ConvFormerB36",
    "ConvFormerM36",
    "ConvFormerS18",
    "ConvFormerS36",
    "DropPath",
    "IdentityFormerM36",
    "IdentityFormerM48",
    "IdentityFormerS12",
    "IdentityFormerS24",
    "IdentityFormerS36",
    "IdentityMixer",
    "LayerScale",
    "MetaFormer",
    "MetaFormerBlock",
    "Mlp",
    "MlpHead",
    "PatchEmbedding",
    "PoolFormerM36",
    "PoolFormerM48",
    "PoolFormerS12",
    "PoolFormerS24",
    "PoolFormerS36",
    "PoolFormerV2M36",
    "PoolFormerV2M48",
    "PoolFormerV2S12",
    "PoolFormerV2S24",
    "PoolFormerV2S36",
    "PoolMixer",
    "PretrainedConfig",
    "RandFormerM36",
    "RandFormerM48",
    "RandFormerS12",
    "RandFormerS24",
    "RandFormerS36",
    "RandomMixer",
    "SepConvMixer",
    "StarReLU",
    "ToRGB",
    "available_weights",
    "count_macs",
    "decode_predictions",
    "get_pretrained_config",
    "imagenet_classes",
    "layers",
    "load_image",
    "load_timm_weights",
    "pyramid_outputs",
    "resize_and_center_crop",
    "weights",
]

# Submodules for TensorFlow-side work (tf.data pipelines, tf.distribute,
# SavedModel and TFLite export) load on first access, so that
# `import keras_metaformer` stays light on the JAX backend.
_LAZY_SUBMODULES = ("data", "distribute", "export")


def __getattr__(name):
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f"keras_metaformer.{name}")
    raise AttributeError(f"module 'keras_metaformer' has no attribute {name!r}")
