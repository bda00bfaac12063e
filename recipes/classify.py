"""Classify a photo with PoolFormer and print the top-5 ImageNet classes.

Command:   python recipes/classify.py [--variant s12] [--image PATH] [--weights imagenet|none|PATH]
Hardware:  any CPU; about 10 s on 2 cores (most of it building the model).
Result:    with ImageNet weights, the default photo (scikit-image's
           `chelsea`, a tabby cat) comes out as tabby / tiger cat / Egyptian
           cat. Offline, the weights cannot be downloaded: the script says
           so and classifies with random weights, which shows the pipeline
           works but gives meaningless classes.
"""

import argparse
import os
import socket
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from training_setup import pretrained_or_random

import keras_metaformer
from keras_metaformer.models import POOLFORMER_BUILDERS

VARIANTS = POOLFORMER_BUILDERS


def load_image(path):
    """An RGB uint8 array: the given file, or scikit-image's cat photo."""
    if path is None:
        from skimage import data

        return data.chelsea(), "scikit-image's chelsea.png (a tabby cat)"
    # The package's reader gives the pixels the tf.data pipelines decode, in
    # every Pillow mode (a 16-bit PNG is not clipped to white).
    from keras_metaformer.preprocessing import load_image as read_rgb

    try:
        return read_rgb(path), path
    except FileNotFoundError:
        sys.exit(f"error: no image file at {path!r}")
    except ValueError as error:
        sys.exit(f"error: cannot read {path!r} as an image ({error})")


def build_model(builder, weights):
    """The classifier and a note on its weights; offline, random weights."""
    model, pretrained, note = pretrained_or_random(builder, weights)
    if not pretrained and weights != "none":
        note += ", so the classes are meaningless"
    return model, note


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="s12")
    parser.add_argument("--image", help="image file (default: scikit-image's cat photo)")
    parser.add_argument(
        "--weights",
        default="imagenet",
        help="'imagenet' (default), 'none' for random weights, or a weights file",
    )
    parser.add_argument("--top", type=int, default=5, help="how many classes to print")
    args = parser.parse_args(argv)

    # Fail fast rather than hang when the network is filtered.
    socket.setdefaulttimeout(30)
    image, description = load_image(args.image)
    model, weights_note = build_model(VARIANTS[args.variant], args.weights)
    batch = keras_metaformer.resize_and_center_crop(image, f"poolformer_{args.variant}")[None]
    probabilities = np.asarray(model.predict(batch, verbose=0))

    print(f"Model: PoolFormer-{args.variant.upper()} ({model.count_params():,} parameters), {weights_note}")
    print(f"Image: {description}, {image.shape[1]}x{image.shape[0]} pixels")
    print(f"Top-{args.top} ImageNet classes:")
    for rank, (synset, names, score) in enumerate(
        keras_metaformer.decode_predictions(probabilities, top=args.top)[0], start=1
    ):
        print(f"  {rank}. {score:7.2%}  {names} ({synset})")


if __name__ == "__main__":
    main()
