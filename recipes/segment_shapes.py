"""Train a DeepLabV3+ with a MetaFormer backbone (keras-hub or keras-cv) on synthetic shapes.

Command:   python recipes/segment_shapes.py [--arch poolformer_s12] [--weights imagenet|none]
                                            [--epochs 20] [--images 512] [--engine keras-hub|keras-cv]
                                            [--smoke]
Hardware:  a 2-core CPU; `--smoke` (what CI runs) takes well under a minute.
Result:    writes `outputs/segment_shapes/history.csv` and the trained weights
           (`deeplabv3plus.weights.h5`), and prints pixel accuracy. Only the
           smoke mode has been run on this project's machines; a full run's
           accuracy is not measured.
Needs:     keras-hub for the default `--engine keras-hub` (`pip install "keras-metaformer[hub]"`,
           then `pip install --no-deps keras-hub`); keras-cv for `--engine keras-cv`
           (`pip install -e ".[recipes]"`).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras
from shapes_setup import hub_backbone
from shapes_setup import keras_cv_backbone
from shapes_setup import parse_arguments
from shapes_setup import write_history
from synthetic_shapes import CLASS_NAMES
from synthetic_shapes import make_shapes

# Background and one class per colour.
NUM_CLASSES = len(CLASS_NAMES) + 1


def keras_hub_segmenter(args, image_shape):
    """keras-hub's `DeepLabV3ImageSegmenter` (DeepLabV3+) on a `MetaFormerBackbone`, compiled.

    Its preprocessor normalises the images, so it takes RGB pixels in [0, 255].
    """
    # First, as `keras_metaformer.hub` says how to install keras-hub where it is missing.
    encoder = hub_backbone(args.arch, args.weights, args.smoke, image_shape)
    import keras_hub

    from keras_metaformer.hub.metaformer_image_converter import normalisation

    backbone = keras_hub.models.DeepLabV3Backbone(
        image_encoder=encoder,
        # Atrous pooling on P5 (stride 32), upsampled 8 times to meet the
        # P2 features (stride 4) of the DeepLabV3+ decoder.
        spatial_pyramid_pooling_key="P5",
        upsampling_size=8,
        dilation_rates=[6, 12, 18],
        low_level_feature_key="P2",
        image_shape=image_shape,
    )
    scale, offset = normalisation()
    preprocessor = keras_hub.models.DeepLabV3ImageSegmenterPreprocessor(
        keras_hub.layers.DeepLabV3ImageConverter(scale=scale, offset=offset)
    )
    segmenter = keras_hub.models.DeepLabV3ImageSegmenter(
        backbone=backbone, num_classes=NUM_CLASSES, preprocessor=preprocessor
    )
    segmenter.compile(
        optimizer=keras.optimizers.AdamW(1e-4, weight_decay=0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),  # it outputs logits
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    return segmenter


def keras_cv_segmenter(args, image_shape):
    """keras-cv's `DeepLabV3Plus` on a `KerasCVBackbone`, compiled; it takes RGB pixels in [0, 255]."""
    import keras_cv

    segmenter = keras_cv.models.DeepLabV3Plus(
        num_classes=NUM_CLASSES, backbone=keras_cv_backbone(args.arch, args.weights, args.smoke, image_shape)
    )
    segmenter.compile(
        optimizer=keras.optimizers.AdamW(1e-4, weight_decay=0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(),  # it outputs probabilities
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    return segmenter


def main(argv=None):
    args = parse_arguments(argv, __doc__.split("\n")[0], "outputs/segment_shapes")

    size = 64 if args.smoke else 128
    images, _, _, masks = make_shapes(args.images, size=size)
    # DeepLabV3+ needs a static input size.
    build = keras_hub_segmenter if args.engine == "keras-hub" else keras_cv_segmenter
    segmenter = build(args, (size, size, 3))
    history = segmenter.fit(images, masks, batch_size=4, epochs=args.epochs, verbose=2)
    write_history(args.output, history, loss="loss", pixel_accuracy="accuracy")
    segmenter.save_weights(os.path.join(args.output, "deeplabv3plus.weights.h5"))
    print(
        f"final loss {history.history['loss'][-1]:.4f}, pixel accuracy "
        f"{history.history['accuracy'][-1]:.3f}; wrote {args.output}"
    )
    return history


if __name__ == "__main__":
    main()
