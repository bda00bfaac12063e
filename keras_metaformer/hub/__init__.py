"""keras_metaformer's models as keras-hub backbones, classifiers and presets.

Importing this module registers the classes below with Keras and hooks
keras_metaformer into keras-hub's timm preset loader, so that

    import keras_hub
    import keras_metaformer.hub

    classifier = keras_hub.models.ImageClassifier.from_preset("hf://timm/caformer_s18.sail_in1k")

builds a `MetaFormerImageClassifier` with timm's weights, without torch.
Presets saved with `save_to_preset` load back the same way, after this
import. It needs keras-hub (`pip install "keras-metaformer[hub]"`, then
`pip install --no-deps keras-hub`; see the README).
"""

try:
    import keras_hub  # noqa: F401
except ImportError as error:
    raise ImportError(
        "keras_metaformer.hub needs keras-hub, which is not installed. Install it with "
        '`pip install "keras-metaformer[hub]" && pip install --no-deps keras-hub` (the --no-deps '
        "skips tensorflow-text, which image models do not use and which pulls the full tensorflow wheel)."
    ) from error

from keras_metaformer.hub.metaformer_backbone import MetaFormerBackbone
from keras_metaformer.hub.metaformer_image_classifier import MetaFormerImageClassifier
from keras_metaformer.hub.metaformer_image_classifier_preprocessor import MetaFormerImageClassifierPreprocessor
from keras_metaformer.hub.metaformer_image_converter import MetaFormerImageConverter
from keras_metaformer.hub.timm_presets import register

register()

__all__ = [
    "MetaFormerBackbone",
    "MetaFormerImageClassifier",
    "MetaFormerImageClassifierPreprocessor",
    "MetaFormerImageConverter",
]
