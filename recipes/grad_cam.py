"""Write a Grad-CAM overlay of PoolFormer's prediction on a real photo.

Command:   python recipes/grad_cam.py [--arch poolformer_s12] [--image PATH]
                                      [--weights imagenet|none|PATH] [--output grad_cam.png]
Hardware:  any CPU; about 10 s on 2 cores.
Result:    a PNG: the photo (default: scikit-image's cat) with the Grad-CAM
           heat of the top class laid over it as a colour map, a colour bar
           saying what the colours mean, and a caption naming the class, its
           probability, the layer and the weights. With ImageNet weights the
           heat should sit on the cat; offline the weights are random (the
           script and the caption say so) and the heatmap is meaningless.
"""

import argparse
import os
import socket
import sys

import keras
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from classify import build_model
from classify import load_image

import keras_metaformer
from keras_metaformer.grad_cam import grad_cam
from keras_metaformer.models.metaformer import pyramid_layer_names


def write_overlay(path, image, heatmap, caption, opacity=0.45):
    """Writes the image with `heatmap` over it as a colour map, a colour bar and `caption`.

    The heatmap is upsampled (bilinear) to the image. The PNG's `Title` text
    chunk is the caption too. Returns the matplotlib figure.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    heat = keras.ops.image.resize(heatmap[..., None], image.shape[:2], interpolation="bilinear")
    heat = np.clip(keras.ops.convert_to_numpy(heat)[..., 0], 0.0, 1.0)
    figure, axis = pyplot.subplots(figsize=(6, 5))
    axis.imshow(np.clip(image, 0, 255).astype("uint8"))  # float pixels would be read as [0, 1]
    colours = axis.imshow(heat, cmap="jet", alpha=opacity, vmin=0.0, vmax=1.0)
    axis.set_axis_off()
    bar = figure.colorbar(colours, ax=axis, fraction=0.046, pad=0.03)
    bar.set_label("Grad-CAM heat: evidence for the class (1 = strongest)")
    figure.text(0.5, 0.08, caption, ha="center", va="top")
    figure.savefig(path, dpi=100, bbox_inches="tight", metadata={"Title": caption})
    pyplot.close(figure)
    return figure


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="poolformer_s12", choices=sorted(keras_metaformer.BUILDERS))
    parser.add_argument("--image", help="image file (default: scikit-image's cat photo)")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--output", default="grad_cam.png")
    args = parser.parse_args(argv)
    socket.setdefaulttimeout(30)

    image, description = load_image(args.image)
    model, note = build_model(keras_metaformer.BUILDERS[args.arch], args.weights)
    crop = keras.ops.convert_to_numpy(keras_metaformer.resize_and_center_crop(image, args.arch))
    layer_name = pyramid_layer_names(model)["P5"]
    heatmaps, classes = grad_cam(model, crop[None], layer_name=layer_name)
    class_index = int(classes[0])
    probability = float(model.predict(crop[None], verbose=0)[0, class_index])
    synset, names = keras_metaformer.imagenet_classes()[class_index]
    caption = (
        f"Grad-CAM for class '{names.split(',')[0]}' ({synset}), p={probability:.2f}\n"
        f"layer {layer_name} of {args.arch}\n{note}"
    )
    figure = write_overlay(args.output, crop, heatmaps[0], caption)
    print(f"{args.arch}, {note}; image: {description}")
    print(f"top class: {names} ({synset}), p={probability:.2f}; wrote {args.output}")
    return heatmaps[0], figure


if __name__ == "__main__":
    main()
