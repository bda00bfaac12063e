"""Train a RetinaNet with a MetaFormer backbone (keras-hub or keras-cv) on synthetic shapes.

Command:   python recipes/detect_shapes.py [--arch poolformer_s12] [--weights imagenet|none]
                                           [--epochs 20] [--images 512] [--engine keras-hub|keras-cv]
                                           [--smoke]
Hardware:  a 2-core CPU; `--smoke` (what CI runs) takes well under a minute.
Result:    writes `outputs/detect_shapes/history.csv` and the trained weights
           (`retinanet.weights.h5`); the printed losses should fall. Only the
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
import numpy as np
from shapes_setup import hub_backbone
from shapes_setup import keras_cv_backbone
from shapes_setup import parse_arguments
from shapes_setup import write_history
from synthetic_shapes import CLASS_NAMES
from synthetic_shapes import make_shapes

# The focal loss' prior (Lin et al., "Focal Loss for Dense Object
# Detection", 2017): each class logit starts at this probability.
PRIOR_PROBABILITY = 0.01


def keras_hub_detector(args, image_size):
    """keras-hub's `RetinaNetObjectDetector` on a `MetaFormerBackbone`, compiled.

    Its preprocessor normalises the images, so it takes RGB pixels in [0, 255].
    """
    image_shape = (image_size, image_size, 3)
    # First, as `keras_metaformer.hub` says how to install keras-hub where it is missing.
    encoder = hub_backbone(args.arch, args.weights, args.smoke, image_shape)
    import keras_hub

    from keras_metaformer.hub.metaformer_image_converter import normalisation

    backbone = keras_hub.models.RetinaNetBackbone(
        image_encoder=encoder,
        min_level=3,
        max_level=7,
        use_p5=False,
        image_shape=image_shape,
    )
    scale, offset = normalisation()
    preprocessor = keras_hub.models.RetinaNetObjectDetectorPreprocessor(
        keras_hub.layers.RetinaNetImageConverter(scale=scale, offset=offset, bounding_box_format="xywh")
    )
    detector = keras_hub.models.RetinaNetObjectDetector(
        backbone=backbone,
        num_classes=len(CLASS_NAMES),
        bounding_box_format="xywh",
        preprocessor=preprocessor,
        classification_head_prior_probability=PRIOR_PROBABILITY,
    )
    initialise_heads_as_retinanet(detector, PRIOR_PROBABILITY)
    # keras-hub's losses: a focal loss on the classes, Huber on the boxes.
    detector.compile(optimizer=keras.optimizers.AdamW(1e-4, weight_decay=0.05))
    return detector


def initialise_heads_as_retinanet(detector, prior_probability):
    """Initialises the class and box heads as the RetinaNet paper does (section 4.1).

    Convolution kernels from N(0, 0.01^2), biases 0, and the class logits'
    bias at `-log((1 - prior) / prior)`, so that every anchor starts at the
    prior probability of every class. keras-hub (0.32) draws the kernels
    from N(0, 0.05^2), which makes the initial logits' standard deviation
    about 10 through the heads' five 256-channel convolutions, and gives
    the prior's bias to the box head instead of the class head: the loss of
    the first steps is then in the thousands. Its pretrained presets load
    over this; a new detector trains from it.
    """
    seed = keras.random.SeedGenerator(0)
    for head in (detector.classification_head, detector.box_head):
        for conv in [*head.conv_layers, head.prediction_layer]:
            conv.kernel.assign(keras.random.normal(conv.kernel.shape, stddev=0.01, seed=seed))
            conv.bias.assign(np.zeros(conv.bias.shape, "float32"))
    logits = detector.classification_head.prediction_layer.bias
    logits.assign(np.full(logits.shape, -np.log((1 - prior_probability) / prior_probability), "float32"))


def keras_cv_detector(args):
    """keras-cv's `RetinaNet` on a `KerasCVBackbone`, compiled; it takes RGB pixels in [0, 255]."""
    import keras_cv

    detector = keras_cv.models.RetinaNet(
        num_classes=len(CLASS_NAMES),
        bounding_box_format="xywh",
        backbone=keras_cv_backbone(args.arch, args.weights, args.smoke, input_shape=(None, None, 3)),
    )
    detector.compile(
        classification_loss="focal",
        box_loss="smoothl1",
        optimizer=keras.optimizers.AdamW(1e-4, weight_decay=0.05),
    )
    return detector


def main(argv=None):
    args = parse_arguments(argv, __doc__.split("\n")[0], "outputs/detect_shapes")

    size = 64 if args.smoke else 128
    images, boxes, classes, _ = make_shapes(args.images, size=size)
    # Boxes are xywh, padded with boxes of class -1: no object, for both engines.
    if args.engine == "keras-hub":
        detector = keras_hub_detector(args, size)
        labels = {"boxes": boxes, "labels": classes}
    else:
        detector = keras_cv_detector(args)
        labels = {"boxes": boxes, "classes": classes}
    history = detector.fit(images, labels, batch_size=4, epochs=args.epochs, verbose=2)
    write_history(args.output, history, loss="loss")
    detector.save_weights(os.path.join(args.output, "retinanet.weights.h5"))
    print(f"final loss {history.history['loss'][-1]:.4f}; wrote {args.output}")
    return history


if __name__ == "__main__":
    main()
