"""Model builders of the MetaFormer family."""

from keras_metaformer.models.metaformer import MetaFormer
from keras_metaformer.models.poolformer import POOLFORMER_BUILDERS
from keras_metaformer.models.poolformer import POOLFORMER_VARIANTS
from keras_metaformer.models.poolformer import PoolFormerM36
from keras_metaformer.models.poolformer import PoolFormerM48
from keras_metaformer.models.poolformer import PoolFormerS12
from keras_metaformer.models.poolformer import PoolFormerS24
from keras_metaformer.models.poolformer import PoolFormerS36

__all__ = [
    "MetaFormer",
    "POOLFORMER_BUILDERS",
    "POOLFORMER_VARIANTS",
    "PoolFormerM36",
    "PoolFormerM48",
    "PoolFormerS12",
    "PoolFormerS24",
    "PoolFormerS36",
]
