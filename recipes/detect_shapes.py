"""Train a RetinaNet with a MetaFormer backbone (keras-cv) on synthetic shapes.

Command:   python recipes/detect_shapes.py [--arch poolformer_s12] [--weights imagenet|none]
                                           [--epochs 20] [--images 512] [--smoke]
Hardware:  a 2-core CPU; `--smoke` (what CI runs) takes well under a minute.
Result:    writes `outputs/detect_shapes/history.csv` and the trained weights;
           the printed losses should fall. Only the smoke mode has been run
           on this project's machines; a full run's accuracy is not measured.
Needs:     keras-cv (`pip install -e ".[recipes]"`).
"""

import argparse
import csv
import os
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras
import keras_cv
from synthetic_shapes import CLASS_NAMES
from synthetic_shapes import make_shapes
from training_setup import pretrained_or_random

import keras_metaformer
from keras_metaformer.keras_cv_backbone import KerasCVBackbone


def build_backbone(arch, weights, smoke, input_shape=(None, None, 3)):
    """The keras-cv backbone; offline, ImageNet weights fall back to random ones."""
    if smoke:  # a small MetaFormer, so that CI trains a step in seconds
        model = keras_metaformer.MetaFormer(
            depths=(1, 1, 1, 1), dims=(16, 32, 48, 64), include_top=False, input_shape=input_shape
        )
        return KerasCVBackbone(model)
    model, _, note = pretrained_or_random(
        keras_metaformer.BUILDERS[arch], weights, include_top=False, input_shape=input_shape
    )
    print(f"Backbone: {note}")
    return KerasCVBackbone(model)


def parse_arguments(argv, description, output):
    """The options both shapes recipes take."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--arch", default="poolformer_s12", choices=sorted(keras_metaformer.BUILDERS))
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--output", default=output)
    parser.add_argument("--smoke", action="store_true", help="one step on 4 images (CI)")
    args = parser.parse_args(argv)
    socket.setdefaulttimeout(30)  # fail fast rather than hang offline
    if args.smoke:
        args.epochs, args.images = 1, 4
    return args


def main(argv=None):
    args = parse_arguments(argv, __doc__.split("\n")[0], "outputs/detect_shapes")

    images, boxes, classes, _ = make_shapes(args.images, size=64 if args.smoke else 128)
    detector = keras_cv.models.RetinaNet(
        num_classes=len(CLASS_NAMES),
        bounding_box_format="xywh",
        backbone=build_backbone(args.arch, args.weights, args.smoke),
    )
    detector.compile(
        classification_loss="focal",
        box_loss="smoothl1",
        optimizer=keras.optimizers.AdamW(1e-4, weight_decay=0.05),
    )
    history = detector.fit(images, {"boxes": boxes, "classes": classes}, batch_size=4, epochs=args.epochs, verbose=2)
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "history.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "loss"])
        writer.writerows(enumerate(history.history["loss"], start=1))
    detector.save_weights(os.path.join(args.output, "retinanet.weights.h5"))
    print(f"final loss {history.history['loss'][-1]:.4f}; wrote {args.output}")
    return history


if __name__ == "__main__":
    main()
