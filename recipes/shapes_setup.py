"""What the shapes recipes (`detect_shapes.py`, `segment_shapes.py`) share.

Their options, the MetaFormer backbone for each engine (keras-hub, the
default, or keras-cv) and the history file. Each engine is imported only
when it is used, so that either runs without the other installed.
"""

import argparse
import csv
import os
import socket

from training_setup import pretrained_or_random

import keras_metaformer

ENGINES = ("keras-hub", "keras-cv")
# `--smoke`: a MetaFormer small enough that CI trains a step in seconds.
SMOKE_ARCHITECTURE = dict(depths=(1, 1, 1, 1), dims=(16, 32, 48, 64))


def parse_arguments(argv, description, output):
    """The options both shapes recipes take."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--arch", default="poolformer_s12", choices=sorted(keras_metaformer.BUILDERS))
    parser.add_argument("--weights", default="imagenet", help="imagenet, none, or a weights file")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--output", default=output)
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default="keras-hub",
        help="keras-hub's task models (default), or keras-cv's (frozen upstream since 2024; kept working)",
    )
    parser.add_argument("--smoke", action="store_true", help="one step on 4 images (CI)")
    args = parser.parse_args(argv)
    socket.setdefaulttimeout(30)  # fail fast rather than hang offline
    if args.smoke:
        args.epochs, args.images = 1, 4
    return args


def hub_backbone(arch, weights, smoke, image_shape):
    """A `keras_metaformer.hub.MetaFormerBackbone`; offline, ImageNet weights fall back to random ones.

    It takes images normalised with ImageNet's mean and standard deviation,
    which the task's preprocessor does (`metaformer_image_converter.normalisation()`
    gives keras-hub's scale and offset).
    """
    from keras_metaformer.hub import MetaFormerBackbone

    if smoke:
        return MetaFormerBackbone(**SMOKE_ARCHITECTURE, image_shape=image_shape)
    backbone = MetaFormerBackbone(arch, image_shape=image_shape)
    if weights == "none":
        print("Backbone: random weights (--weights none)")
        return backbone
    # The builder's model without its head and preprocessing has the
    # backbone's layers, under the same names.
    builder = keras_metaformer.BUILDERS[arch]
    model, pretrained, note = pretrained_or_random(
        builder, weights, include_top=False, include_preprocessing=False, input_shape=image_shape
    )
    print(f"Backbone: {note}")
    if pretrained:
        copy_weights(model, backbone)
    return backbone


def copy_weights(source, target):
    """Copies each layer's weights from `source` into the layer of the same name in `target`."""
    names = {layer.name for layer in source.layers if layer.weights}
    expected = {layer.name for layer in target.layers if layer.weights}
    if names != expected:
        raise ValueError(
            f"Cannot copy the weights of {source.name!r} into {target.name!r}: their layers differ. "
            f"Only in {source.name!r}: {sorted(names - expected)}; only in {target.name!r}: {sorted(expected - names)}."
        )
    for name in sorted(names):
        target.get_layer(name).set_weights(source.get_layer(name).get_weights())


def keras_cv_backbone(arch, weights, smoke, input_shape):
    """A `KerasCVBackbone`; offline, ImageNet weights fall back to random ones.

    It keeps the model's in-graph preprocessing: it takes RGB pixels in [0, 255].
    """
    from keras_metaformer.keras_cv_backbone import KerasCVBackbone

    if smoke:
        model = keras_metaformer.MetaFormer(**SMOKE_ARCHITECTURE, include_top=False, input_shape=input_shape)
        return KerasCVBackbone(model)
    model, _, note = pretrained_or_random(
        keras_metaformer.BUILDERS[arch], weights, include_top=False, input_shape=input_shape
    )
    print(f"Backbone: {note}")
    return KerasCVBackbone(model)


def write_history(output, history, **columns):
    """`output/history.csv`: a row per epoch; `columns` maps each column to its key in `history.history`."""
    os.makedirs(output, exist_ok=True)
    values = [history.history[key] for key in columns.values()]
    with open(os.path.join(output, "history.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", *columns])
        writer.writerows([epoch, *row] for epoch, row in enumerate(zip(*values), start=1))
