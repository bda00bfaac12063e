"""Train a DeepLabV3+ with a MetaFormer backbone (keras-cv) on synthetic shapes.

Command:   python recipes/segment_shapes.py [--arch poolformer_s12] [--weights imagenet|none]
                                            [--epochs 20] [--images 512] [--smoke]
Hardware:  a 2-core CPU; `--smoke` (what CI runs) takes well under a minute.
Result:    writes `outputs/segment_shapes/history.csv` and the trained weights,
           and prints pixel accuracy. Only the smoke mode has been run on this
           project's machines; a full run's accuracy is not measured.
Needs:     keras-cv (`pip install -e ".[recipes]"`).
"""

import csv
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras
import keras_cv
from detect_shapes import build_backbone
from detect_shapes import parse_arguments
from synthetic_shapes import CLASS_NAMES
from synthetic_shapes import make_shapes


def main(argv=None):
    args = parse_arguments(argv, __doc__.split("\n")[0], "outputs/segment_shapes")

    size = 64 if args.smoke else 128
    images, _, _, masks = make_shapes(args.images, size=size)
    # DeepLabV3+ needs a static input size.
    backbone = build_backbone(args.arch, args.weights, args.smoke, input_shape=(size, size, 3))
    segmenter = keras_cv.models.DeepLabV3Plus(num_classes=len(CLASS_NAMES) + 1, backbone=backbone)
    segmenter.compile(
        optimizer=keras.optimizers.AdamW(1e-4, weight_decay=0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=["accuracy"],
    )
    history = segmenter.fit(images, masks, batch_size=4, epochs=args.epochs, verbose=2)
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "history.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "loss", "pixel_accuracy"])
        writer.writerows(zip(range(1, args.epochs + 1), history.history["loss"], history.history["accuracy"]))
    segmenter.save_weights(os.path.join(args.output, "deeplabv3plus.weights.h5"))
    print(
        f"final loss {history.history['loss'][-1]:.4f}, pixel accuracy "
        f"{history.history['accuracy'][-1]:.3f}; wrote {args.output}"
    )
    return history


if __name__ == "__main__":
    main()
