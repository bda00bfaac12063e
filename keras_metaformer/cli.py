"""The `keras-metaformer` command: predict, export, convert, info.

    keras-metaformer predict cat.jpg dog.png             # top-5 ImageNet classes
    keras-metaformer export poolformer_s12 serving/poolformer_s12 --format saved_model
    keras-metaformer export finetune_output/model.keras s12.tflite --format tflite --quantize float16
    keras-metaformer convert poolformer_s12.safetensors s12.weights.h5 --model poolformer_s12
    keras-metaformer info poolformer_s12

MODEL is an architecture name (with `--weights`) or a `.keras` file.
"""

import argparse
import os
import sys

import numpy as np

from keras_metaformer.export.saved_model import outputs_logits
from keras_metaformer.export.saved_model import preprocessing_config


class CommandError(Exception):
    """A user error: printed as `error: ...` with exit status 2, no traceback."""


def _architectures():
    from keras_metaformer.models import BUILDERS

    return BUILDERS


def load_model(spec, weights="imagenet", image_size=None):
    """A model from an architecture name (plus weights) or a `.keras` file."""
    import keras

    import keras_metaformer  # noqa: F401  (registers the layers .keras files refer to)

    if spec.endswith(".keras"):
        if not os.path.isfile(spec):
            raise CommandError(f"no model file at {spec!r}.")
        return keras.saving.load_model(spec, compile=False)
    builders = _architectures()
    if spec not in builders:
        raise CommandError(
            f"unknown model {spec!r}: expected a .keras file or one of: {', '.join(sorted(builders))}."
        )
    kwargs = {"input_shape": (image_size, image_size, 3)} if image_size else {}
    weights = None if weights == "none" else weights
    try:
        return builders[spec](weights=weights, **kwargs)
    except OSError as error:
        raise CommandError(f"could not load the {weights!r} weights of {spec}: {error}") from error
    except ValueError as error:
        raise CommandError(str(error)) from error


def read_image(path):
    """An RGB uint8 array from an image file, with a clear error if it is not one.

    The pixels are those the tf.data pipelines decode, in every Pillow mode
    (16-bit, palette, alpha, CMYK): see `keras_metaformer.preprocessing.pil_to_rgb`.
    """
    from keras_metaformer.preprocessing import load_image

    try:
        return load_image(path)
    except FileNotFoundError:
        raise CommandError(f"no image file at {os.fspath(path)!r}.") from None
    except ValueError as error:
        message = str(error)
        raise CommandError(message[0].lower() + message[1:]) from None


def predict(args):
    import dataclasses

    from keras_metaformer.imagenet import imagenet_classes
    from keras_metaformer.preprocessing import resize_and_center_crop

    images = [read_image(path) for path in args.images]  # fail before the model loads
    model = load_model(args.model, args.weights)
    size = model.input_shape[1]
    config = dataclasses.replace(preprocessing_config(model), input_size=(size, size))
    batch = np.stack([np.asarray(resize_and_center_crop(image, config)) for image in images])
    scores = np.asarray(model.predict(batch, verbose=0), dtype="float64")
    if outputs_logits(model):
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
    names = [n for _, n in imagenet_classes()] if scores.shape[-1] == 1000 else None
    for path, row in zip(args.images, scores):
        print(path)
        for rank, index in enumerate(np.argsort(-row)[: args.top], 1):
            label = names[index] if names else f"class {index}"
            print(f"  {rank}. {row[index]:7.2%}  {label}")


def export_command(args):
    from keras_metaformer import export

    model = load_model(args.model, args.weights, args.image_size)
    class_names = None
    if args.class_names:
        if not os.path.isfile(args.class_names):
            raise CommandError(f"no class-names file at {args.class_names!r}.")
        with open(args.class_names) as f:
            class_names = [line.strip() for line in f if line.strip()]
    try:
        if args.format == "saved_model":
            path = export.export_saved_model(model, args.output, version=args.version, class_names=class_names)
        else:
            calibration = _calibration_images(args, model) if args.quantize == "int8" else None
            path = export.export_tflite(model, args.output, quantize=args.quantize,
                                        representative_images=calibration)
    except (ValueError, FileExistsError) as error:
        raise CommandError(str(error)) from error
    print(f"Wrote {path}")


def _calibration_images(args, model):
    if not args.calibration_dir:
        raise CommandError("--quantize int8 needs --calibration-dir: a folder of a few hundred typical images.")
    from keras_metaformer import data

    size = model.input_shape[1]
    try:
        return data.from_directory(args.calibration_dir, training=False, image_size=size,
                                   crop_pct=preprocessing_config(model).crop_pct, batch_size=32)
    except (ValueError, FileNotFoundError) as error:
        raise CommandError(str(error)) from error


def convert(args):
    from keras_metaformer.weights import load_timm_weights

    if not os.path.isfile(args.checkpoint):
        raise CommandError(f"no checkpoint file at {args.checkpoint!r}.")
    if not args.output.endswith(".weights.h5"):
        raise CommandError(f"the output must end in .weights.h5 (Keras' weights format); got {args.output!r}.")
    model = load_model(args.model, "none")
    try:
        load_timm_weights(model, args.checkpoint)
    except ValueError as error:  # unreadable file, missing or mismatched keys
        raise CommandError(str(error)) from error
    model.save_weights(args.output)
    print(f"Wrote {args.output}: {len(model.weights)} tensors of {args.model}. "
          f"Load with keras_metaformer.BUILDERS[{args.model!r}](weights={args.output!r}).")


def info(args):
    from keras_metaformer.macs import count_macs
    from keras_metaformer.weights import available_weights

    model = load_model(args.model, "none", args.image_size)
    size = model.input_shape[1]
    config = preprocessing_config(model)
    print(f"model:          {model.name}")
    print(f"parameters:     {model.count_params():,}")
    print(f"MACs:           {count_macs(model) / 1e9:.2f} G at {size}x{size}")
    tags = available_weights(args.model) if args.model in _architectures() else []
    print(f"weight tags:    {', '.join(tags) if tags else 'none published'}")
    print(f"preprocessing:  RGB [0, 255] in, normalised inside the model (mean {config.mean}, std {config.std});")
    print(f"                evaluation: shorter side to floor({size} / {config.crop_pct}) = "
          f"{int(size // config.crop_pct)}, {config.interpolation}, centre crop {size}x{size}")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-metaformer", description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 1)[1],
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def model_arguments(command, weights=True):
        command.add_argument("model", help="an architecture (e.g. poolformer_s12) or a .keras file")
        if weights:
            command.add_argument("--weights", default="imagenet",
                                 help="for an architecture: imagenet, a weight tag, none, or a weights file")

    command = commands.add_parser("predict", help="top-5 classes of images")
    command.add_argument("images", nargs="+", metavar="IMAGE")
    command.add_argument("--model", default="poolformer_s12", help="an architecture or a .keras file")
    command.add_argument("--weights", default="imagenet", help="imagenet, a weight tag, or a weights file")
    command.add_argument("--top", type=int, default=5)
    command.set_defaults(run=predict)

    command = commands.add_parser("export", help="a SavedModel for TF Serving or a .tflite file")
    model_arguments(command)
    command.add_argument("output", help="saved_model: the base folder; tflite: the .tflite file")
    command.add_argument("--format", choices=("saved_model", "tflite"), required=True)
    command.add_argument("--quantize", choices=("float32", "float16", "dynamic", "int8"), default="float32")
    command.add_argument("--calibration-dir", help="int8: a folder of images (class sub-folders)")
    command.add_argument("--version", type=int, default=1, help="saved_model: the version folder")
    command.add_argument("--class-names", help="a text file, one class name per line")
    command.add_argument("--image-size", type=int, help="for an architecture: the input size")
    command.set_defaults(run=export_command)

    command = commands.add_parser("convert", help="a timm or authors' checkpoint to a Keras weights file")
    command.add_argument("checkpoint", help="a .safetensors or .npz file (timm or authors' key names)")
    command.add_argument("output", help="the .weights.h5 file to write")
    command.add_argument("--model", required=True, help="the architecture, e.g. poolformer_s12")
    command.set_defaults(run=convert)

    command = commands.add_parser("info", help="parameters, MACs, weight tags and preprocessing")
    model_arguments(command, weights=False)
    command.add_argument("--image-size", type=int, help="for an architecture: the input size (default 224)")
    command.set_defaults(run=info)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except CommandError as error:
        print(f"keras-metaformer {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
