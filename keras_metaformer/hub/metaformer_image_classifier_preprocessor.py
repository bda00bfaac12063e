"""`MetaFormerImageClassifierPreprocessor`: images in, normalised crops out."""

import keras
import keras_hub

from keras_metaformer.hub.metaformer_backbone import MetaFormerBackbone
from keras_metaformer.hub.metaformer_image_converter import MetaFormerImageConverter


@keras.saving.register_keras_serializable(package="keras_metaformer")
class MetaFormerImageClassifierPreprocessor(keras_hub.models.ImageClassifierPreprocessor):
    """keras-hub's image classifier preprocessor with a `MetaFormerImageConverter`.

    Example:

    >>> import numpy as np
    >>> from keras_metaformer.hub import MetaFormerImageClassifierPreprocessor, MetaFormerImageConverter
    >>> preprocessor = MetaFormerImageClassifierPreprocessor(
    ...     MetaFormerImageConverter(image_size=(64, 64), crop_pct=0.9))
    >>> x, y = preprocessor(np.zeros((2, 80, 100, 3)), np.array([0, 1]))
    >>> tuple(x.shape)
    (2, 64, 64, 3)
    """

    backbone_cls = MetaFormerBackbone
    image_converter_cls = MetaFormerImageConverter
