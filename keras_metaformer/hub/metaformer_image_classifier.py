"""`MetaFormerImageClassifier`: a MetaFormer backbone with timm's head."""

import keras
import keras_hub

from keras_metaformer.hub.metaformer_backbone import MetaFormerBackbone
from keras_metaformer.hub.metaformer_backbone import classifier_head
from keras_metaformer.hub.metaformer_image_classifier_preprocessor import MetaFormerImageClassifierPreprocessor
from keras_metaformer.models.metaformer import HEAD_NORM_EPSILON
from keras_metaformer.models.metaformer import HEADS
from keras_metaformer.models.metaformer import classifier_layer


@keras.saving.register_keras_serializable(package="keras_metaformer")
class MetaFormerImageClassifier(keras_hub.models.ImageClassifier):
    """An image classifier on a `MetaFormerBackbone`, with timm's head.

    The head is global average pooling, LayerNorm and a classifier: a Dense
    layer (PoolFormer, PoolFormerV2, IdentityFormer, RandFormer) or the
    baselines' two-layer MLP head (ConvFormer, CAFormer). Its layers carry
    the builders' names, so timm's `head.*` tensors load into it.

    Args:
        backbone: a `MetaFormerBackbone`.
        num_classes: number of classes.
        preprocessor: a `MetaFormerImageClassifierPreprocessor`, or `None`.
        head: `"linear"` or `"mlp"`; by default timm's head for the
            backbone's architecture (`"linear"` for a custom one).
        activation: of the classifier: `None` (logits, the default) or
            `"softmax"`.
        dropout: dropout rate before the classifier.
        head_dtype: dtype policy of the head; float32 by default, which
            keeps the logits stable under mixed precision.

    Example:

    >>> import numpy as np
    >>> from keras_metaformer.hub import MetaFormerBackbone, MetaFormerImageClassifier
    >>> backbone = MetaFormerBackbone("caformer_s18", dims=(8, 16, 32, 64))
    >>> classifier = MetaFormerImageClassifier(backbone, num_classes=3)
    >>> classifier.predict(np.zeros((1, 64, 64, 3)), verbose=0).shape, classifier.head
    ((1, 3), 'mlp')
    """

    backbone_cls = MetaFormerBackbone
    preprocessor_cls = MetaFormerImageClassifierPreprocessor

    def __init__(
        self,
        backbone,
        num_classes,
        preprocessor=None,
        head=None,
        activation=None,
        dropout=0.0,
        head_dtype="float32",
        **kwargs,
    ):
        head = classifier_head(getattr(backbone, "architecture", None)) if head is None else head
        if head not in HEADS:
            raise ValueError(f"`head` must be one of {list(HEADS)}, or None. Received: head={head!r}")
        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.pooler = keras.layers.GlobalAveragePooling2D(dtype=head_dtype, name="avg_pool")
        self.head_norm = keras.layers.LayerNormalization(epsilon=HEAD_NORM_EPSILON, dtype=head_dtype, name="head_norm")
        self.output_dropout = keras.layers.Dropout(dropout, dtype=head_dtype, name="output_dropout")
        self.output_dense = classifier_layer(head, num_classes, activation, head_dtype)

        # === Functional model ===
        inputs = backbone.input
        x = backbone(inputs)
        x = self.head_norm(self.pooler(x))
        outputs = self.output_dense(self.output_dropout(x))
        # keras-hub's ImageClassifier builds its own head: skip to Task's constructor.
        keras_hub.models.Task.__init__(self, inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self.num_classes = num_classes
        self.head = head
        self.activation = activation
        self.dropout = dropout
        self.head_dtype = keras.dtype_policies.get(head_dtype).name
        self.pooling = "avg"

    def get_config(self):
        config = keras_hub.models.Task.get_config(self)
        config.update(
            num_classes=self.num_classes,
            head=self.head,
            activation=self.activation,
            dropout=self.dropout,
            head_dtype=self.head_dtype,
        )
        return config

    def head_layers(self):
        """The head's layers with checkpoint weights, as in the builders' models."""
        return [self.head_norm, self.output_dense]
