"""Top-1 / top-5 accuracy of pretrained MetaFormer weights on ImageNet validation.

Command:   python recipes/evaluate_imagenet.py --arch poolformer_s12 --manual-dir /data/imagenet
           (TFDS imagenet2012, built once from the ILSVRC2012 tar files; or
           --data-dir val/ with one <synset> folder per class)
           python recipes/evaluate_imagenet.py --smoke   (CI: TFDS' mock imagenet2012)
Hardware:  any; on a 2-core CPU about 3 hours for S12's 50,000 images.
Result:    timm's published numbers with its weights, e.g. poolformer_s12 77.24
           top-1 / 93.51 top-5; convformer_s18 83.0. Not run here: the weights
           and ImageNet cannot be downloaded on these machines.

Images go through the weights' own evaluation transform (shorter side to
floor(size / crop_pct), bicubic, centre crop; the model normalises).
"""

import argparse
import os
import socket
import sys

import keras

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from train_imagenet import mock_imagenet

import keras_metaformer
from keras_metaformer import data
from keras_metaformer.weights.resolve import resolve_weights


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="poolformer_s12", choices=sorted(keras_metaformer.BUILDERS))
    parser.add_argument("--weights", default="imagenet", help="imagenet, a tag such as sail_in1k_384, or a file")
    parser.add_argument("--data-dir", help="folder with one sub-folder of validation images per class")
    parser.add_argument("--manual-dir", help="folder with the ILSVRC2012 tar files (TFDS imagenet2012)")
    parser.add_argument("--tfds-data-dir", help="TFDS data_dir")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--smoke", action="store_true", help="random weights on mock data (CI)")
    args = parser.parse_args(argv)
    socket.setdefaulttimeout(30)

    if args.smoke:
        model = keras_metaformer.MetaFormer(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), weights=None)
        config = keras_metaformer.get_pretrained_config(args.arch)
        with mock_imagenet() as manual_dir:
            evaluate(model, config, args, manual_dir)
        return
    builder = keras_metaformer.BUILDERS[args.arch]
    model = builder(weights=args.weights)
    weights = resolve_weights(args.weights, args.arch)
    config = weights if isinstance(weights, keras_metaformer.PretrainedConfig) else None
    config = config or keras_metaformer.get_pretrained_config(args.arch)
    evaluate(model, config, args, args.manual_dir)


def evaluate(model, config, args, manual_dir):
    options = dict(config=config, batch_size=args.batch_size)
    if args.data_dir:
        val = data.from_directory(args.data_dir, training=False, **options)
    else:
        val = data.from_tfds(
            "imagenet2012",
            split="validation",
            training=False,
            data_dir=args.tfds_data_dir,
            manual_dir=manual_dir,
            **options,
        )
    data.check_num_classes(model, val)
    print(f"Evaluating {model.name} at {config.input_size[0]}px, crop_pct {config.crop_pct}")
    model.compile(
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
        metrics=[
            keras.metrics.CategoricalAccuracy(name="top1"),
            keras.metrics.TopKCategoricalAccuracy(5, name="top5"),
        ],
    )
    results = model.evaluate(val, return_dict=True, verbose=1 if sys.stdout.isatty() else 2)
    print(f"top-1 {results['top1']:.2%}  top-5 {results['top5']:.2%}")
    return results


if __name__ == "__main__":
    main()
