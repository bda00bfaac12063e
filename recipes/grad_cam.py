"""Write a Grad-CAM overlay of PoolFormer's prediction on a real photo.

Command:   python recipes/grad_cam.py [--arch poolformer_s12] [--image PATH]
                                      [--weights imagenet|none|PATH] [--output grad_cam.png]
Hardware:  any CPU; about 10 s on 2 cores.
Result:    a PNG: the photo (default: scikit-image's cat) with the heatmap of
           the top class laid over it in red. With ImageNet weights the heat
           should sit on the cat; offline the weights are random (the script
           says so) and the heatmap is meaningless.
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


def overlay(image, heatmap, opacity=0.5):
    """The heatmap, upsampled to the image, blended in as red."""
    heat = keras.ops.image.resize(heatmap[..., None], image.shape[:2], interpolation="bilinear")
    heat = np.clip(keras.ops.convert_to_numpy(heat), 0.0, 1.0)
    red = np.zeros_like(image, dtype="float32")
    red[..., 0] = 255.0
    blended = image * (1 - opacity * heat) + red * opacity * heat
    return np.clip(blended, 0, 255).astype("uint8")


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
    heatmaps, classes = grad_cam(model, crop[None])
    synset, names = keras_metaformer.imagenet_classes()[int(classes[0])]
    keras.utils.save_img(args.output, overlay(crop, heatmaps[0]))
    print(f"{args.arch}, {note}; image: {description}")
    print(f"top class: {names} ({synset}); wrote {args.output}")
    return heatmaps[0]


if __name__ == "__main__":
    main()
