"""Model builders of the MetaFormer family."""

from keras_metaformer.models.builders import BUILDERS
from keras_metaformer.models.builders import POOLFORMER_BUILDERS
from keras_metaformer.models.builders import POOLFORMER_VARIANTS
from keras_metaformer.models.builders import CAFormerB36
from keras_metaformer.models.builders import CAFormerM36
from keras_metaformer.models.builders import CAFormerS18
from keras_metaformer.models.builders import CAFormerS36
from keras_metaformer.models.builders import ConvFormerB36
from keras_metaformer.models.builders import ConvFormerM36
from keras_metaformer.models.builders import ConvFormerS18
from keras_metaformer.models.builders import ConvFormerS36
from keras_metaformer.models.builders import IdentityFormerM36
from keras_metaformer.models.builders import IdentityFormerM48
from keras_metaformer.models.builders import IdentityFormerS12
from keras_metaformer.models.builders import IdentityFormerS24
from keras_metaformer.models.builders import IdentityFormerS36
from keras_metaformer.models.builders import PoolFormerM36
from keras_metaformer.models.builders import PoolFormerM48
from keras_metaformer.models.builders import PoolFormerS12
from keras_metaformer.models.builders import PoolFormerS24
from keras_metaformer.models.builders import PoolFormerS36
from keras_metaformer.models.builders import PoolFormerV2M36
from keras_metaformer.models.builders import PoolFormerV2M48
from keras_metaformer.models.builders import PoolFormerV2S12
from keras_metaformer.models.builders import PoolFormerV2S24
from keras_metaformer.models.builders import PoolFormerV2S36
from keras_metaformer.models.builders import RandFormerM36
from keras_metaformer.models.builders import RandFormerM48
from keras_metaformer.models.builders import RandFormerS12
from keras_metaformer.models.builders import RandFormerS24
from keras_metaformer.models.builders import RandFormerS36
from keras_metaformer.models.metaformer import MetaFormer
from keras_metaformer.models.metaformer import pyramid_outputs
from keras_metaformer.models.variants import FAMILIES

__all__ = [
    "BUILDERS",
    "FAMILIES",
    "POOLFORMER_BUILDERS",
    "POOLFORMER_VARIANTS",
    "CAFormerB36",
    "CAFormerM36",
    "CAFormerS18",
    "CAFormerS36",
    "ConvFormerB36",
    "ConvFormerM36",
    "ConvFormerS18",
    "ConvFormerS36",
    "IdentityFormerM36",
    "IdentityFormerM48",
    "IdentityFormerS12",
    "IdentityFormerS24",
    "IdentityFormerS36",
    "MetaFormer",
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
    "RandFormerM36",
    "RandFormerM48",
    "RandFormerS12",
    "RandFormerS24",
    "RandFormerS36",
    "pyramid_outputs",
]
