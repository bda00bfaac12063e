"""A MetaFormer as a keras-cv backbone, for detection and segmentation.

This module imports keras_cv, so the package does not import it: load it
when you use it (`pip install keras-cv`).

keras-cv's task models (`RetinaNet`, `YOLOV8Detector`, `DeepLabV3Plus`)
take a `keras_cv.models.Backbone` whose `pyramid_level_inputs` names the
layers that output each pyramid level. A MetaFormer's levels P2-P5 are the
outputs of its four stages, at strides 4, 8, 16 and 32.

Example:

    import keras_cv
    import keras_metaformer
    from keras_metaformer.keras_cv_backbone import KerasCVBackbone

    backbone = KerasCVBackbone(
        keras_metaformer.PoolFormerS12(include_top=False, input_shape=(None, None, 3))
    )
    detector = keras_cv.models.RetinaNet(
        num_classes=20, bounding_box_format="xywh", backbone=backbone
    )

The backbone keeps the model's in-graph preprocessing: it takes RGB pixels
in [0, 255], as keras-cv's pipelines produce.
"""

import keras

try:
    import keras_cv
except ImportError as error:
    raise ImportError(
        "keras_metaformer.keras_cv_backbone needs keras-cv, which is not installed: "
        '`pip install "keras-metaformer[data]"` (or `pip install keras-cv`).'
    ) from error

from keras_metaformer.models.metaformer import pyramid_layer_names


@keras.saving.register_keras_serializable(package="keras_metaformer")
class KerasCVBackbone(keras_cv.models.Backbone):
    """Wraps a MetaFormer built with `include_top=False` for keras-cv.

    Args:
        model: a model from one of keras_metaformer's builders, with
            `include_top=False` and `pooling=None`, or its serialized config.
        **kwargs: `keras.Model` arguments such as `name`.
    """

    def __init__(self, model, **kwargs):
        if isinstance(model, dict):
            model = keras.saving.deserialize_keras_object(model)
        if len(model.outputs[0].shape) != 4:
            raise ValueError(
                "A keras-cv backbone needs feature maps: build the model with "
                "include_top=False and pooling=None. Received a model whose "
                f"output has shape {tuple(model.outputs[0].shape)}."
            )
        kwargs.setdefault("name", f"{model.name}_backbone")
        super().__init__(inputs=model.inputs, outputs=model.outputs, **kwargs)
        self.pyramid_level_inputs = pyramid_layer_names(model)

    def get_config(self):
        model = keras.Model(self.inputs, self.outputs, name=self.name.removesuffix("_backbone"))
        return {
            "model": keras.saving.serialize_keras_object(model),
            "name": self.name,
            "trainable": self.trainable,
        }
