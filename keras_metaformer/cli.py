"""The commands of `keras-metaformer`: predict, export, convert, info.

The parser and `main` live in the top-level module `keras_metaformer_cli`,
so that `keras-metaformer --help` imports no Keras; it imports this module
once the arguments are parsed. `main` here runs the same command line, for
`python -m keras_metaformer.cli` and for callers in Python.
"""

import os
import sys

import numpy as np

from keras_metaformer.export.saved_model import outputs_logits
from keras_metaformer.export.saved_model import preprocessing_config

# The smallest input the four stride-2 stages take (MetaFormer's MIN_INPUT_SIZE).
MIN_IMAGE_SIZE = 32


class CommandError(Exception):
    """A user error: printed as `error: ...` with exit status 2, no traceback."""


def _architectures():
    from keras_metaformer.models import BUILDERS

    return BUILDERS


def load_model(spec, weights="imagenet", image_size=None):
    """A model from an architecture name (plus weights) or a `.keras` file."""
    import keras_metaformer  # noqa: F401  (registers the layers .keras files refer to)

    if spec.endswith(".keras"):
        if image_size is not None:
            raise CommandError(
                f"--image-size applies to an architecture name; the model file {spec!r} keeps the input "
                "size it was saved with. Drop --image-size."
            )
        return _load_model_file(spec)
    from keras_metaformer.weights.download import WeightsDownloadError

    builders = _architectures()
    if spec not in builders:
        raise CommandError(f"unknown model {spec!r}: expected a .keras file or one of: {', '.join(sorted(builders))}.")
    _check_weights(spec, weights)
    kwargs = {"input_shape": (image_size, image_size, 3)} if image_size else {}
    try:
        return builders[spec](weights=None if weights == "none" else weights, **kwargs)
    except WeightsDownloadError as error:
        raise CommandError(error.message(f"--weights /path/to/{error.file_name}")) from error
    except OSError as error:
        raise CommandError(f"could not load the {weights!r} weights of {spec}: {error}") from error
    except ValueError as error:
        raise CommandError(str(error)) from error


def _check_weights(spec, weights):
    """Refuses a --weights value the builder would refuse, in the command line's words."""
    from keras_metaformer.weights.pretrained_configs import AUTHORS_ONLY_WEIGHTS
    from keras_metaformer.weights.pretrained_configs import available_weights
    from keras_metaformer.weights.resolve import authors_only_message

    tags = available_weights(spec)
    if weights == "none" or os.path.isfile(weights) or (tags and weights in ("imagenet", *tags)):
        return
    if weights == "imagenet" and spec in AUTHORS_ONLY_WEIGHTS:
        raise CommandError(
            authors_only_message(spec, "--weights imagenet", "`--weights OUT.safetensors`")
            + "; or `--weights none` for random weights."
        )
    choices = ", ".join(["imagenet", *tags, "none"] if tags else ["none"])
    raise CommandError(
        f"--weights {weights!r} is neither a weight tag of {spec} nor an existing file. Expected one of: "
        f"{choices}, or the path of a weights file (timm .safetensors, .npz, Keras .weights.h5)."
    )


def _load_model_file(path):
    import zipfile

    import keras

    if not os.path.isfile(path):
        raise CommandError(f"no model file at {path!r}.")
    if not zipfile.is_zipfile(path):
        raise CommandError(
            f"{path!r} is not a .keras file (a zip archive written by `model.save`); it may be truncated "
            "or another format. Save the model again with `model.save('model.keras')`."
        )
    try:
        return keras.saving.load_model(path, compile=False)
    except ImportError:  # a missing backend or extra: main() names what to install
        raise
    except Exception as error:  # Keras raises many types for broken archives and unknown layers
        raise CommandError(
            f"cannot load the model in {path!r} ({type(error).__name__}: {error}). Expected a file "
            "written by `model.save('model.keras')`, whose custom layers are registered with "
            "`keras.saving.register_keras_serializable`."
        ) from error


def _check_range(option, value, low, high=None, why=""):
    """A CommandError unless low <= value (<= high)."""
    if value is None or (value >= low and (high is None or value <= high)):
        return
    expected = f"between {low} and {high}" if high is not None else f"at least {low}"
    raise CommandError(f"{option} must be {expected}{why}. Received: {option} {value}.")


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


def _classes(model, spec):
    """The class count of a classifier; a CommandError for a backbone."""
    shape = model.output_shape
    problem = None
    if not isinstance(shape, tuple) or len(shape) != 2:
        problem = f"it outputs {shape}, not (batch, classes)"
    else:
        try:
            outputs_logits(model)
        except ValueError:
            problem = f"its last layer {model.layers[-1].name!r} is not a Dense layer with a softmax or no activation"
    if problem:
        raise CommandError(
            f"predict needs a classifier, but {spec!r} is not one: {problem}. Give a model built with "
            "include_top=True, or one that ends in a Dense layer over the classes."
        )
    inputs = model.input_shape
    if not isinstance(inputs, tuple) or len(inputs) != 4 or inputs[1] is None or inputs[1] != inputs[2]:
        raise CommandError(
            f"predict needs a model taking square RGB images of a fixed size, (batch, size, size, 3); "
            f"{spec!r} takes {inputs}. Build it with e.g. input_shape=(224, 224, 3)."
        )
    return shape[1]


def predict(args):
    import dataclasses

    from keras_metaformer.imagenet import imagenet_classes
    from keras_metaformer.preprocessing import resize_and_center_crop

    _check_range("--top", args.top, 1)
    images = [read_image(path) for path in args.images]  # fail before the model loads
    model = load_model(args.model, args.weights)
    classes = _classes(model, args.model)
    _check_range("--top", args.top, 1, classes, f" (the model has {classes} classes)")
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
            label = names[index] if names else str(index)  # as the SavedModel's class_names
            print(f"  {rank}. {row[index]:7.2%}  {label}")


def export_command(args):
    from keras_metaformer import export
    from keras_metaformer.export.saved_model import check_output_path

    _check_range("--image-size", args.image_size, MIN_IMAGE_SIZE)
    _check_range("--version", args.version, 1)
    try:  # before a model is built or downloaded
        check_output_path(args.output, "folder" if args.format == "saved_model" else "file")
    except (ValueError, FileExistsError) as error:
        raise CommandError(str(error)) from None
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
        elif args.format == "onnx":
            path = export.export_onnx(model, args.output)
        else:
            calibration = _calibration_images(args, model) if args.quantize == "int8" else None
            path = export.export_tflite(model, args.output, quantize=args.quantize, representative_images=calibration)
    except (ValueError, FileExistsError) as error:
        raise CommandError(str(error)) from error
    print(f"Wrote {path}")


def _calibration_images(args, model):
    if not args.calibration_dir:
        raise CommandError("--quantize int8 needs --calibration-dir: a folder of a few hundred typical images.")
    from keras_metaformer import data

    size = model.input_shape[1]
    try:
        return data.from_directory(
            args.calibration_dir,
            training=False,
            image_size=size,
            crop_pct=preprocessing_config(model).crop_pct,
            batch_size=32,
        )
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
    print(
        f"Wrote {args.output}: {len(model.weights)} tensors of {args.model}. "
        f"Load with keras_metaformer.BUILDERS[{args.model!r}](weights={args.output!r})."
    )


def info(args):
    from keras_metaformer.macs import count_macs
    from keras_metaformer.weights import available_weights

    _check_range("--image-size", args.image_size, MIN_IMAGE_SIZE)
    model = load_model(args.model, "none", args.image_size)
    size = model.input_shape[1]
    config = preprocessing_config(model)
    print(f"model:          {model.name}")
    print(f"parameters:     {model.count_params():,}")
    print(f"MACs:           {count_macs(model) / 1e9:.2f} G at {size}x{size}")
    tags = available_weights(args.model) if args.model in _architectures() else []
    print(f"weight tags:    {', '.join(tags) if tags else 'none published'}")
    print(f"preprocessing:  RGB [0, 255] in, normalised inside the model (mean {config.mean}, std {config.std});")
    print(
        f"                evaluation: shorter side to floor({size} / {config.crop_pct}) = "
        f"{int(size // config.crop_pct)}, {config.interpolation}, centre crop {size}x{size}"
    )


def main(argv=None):
    """Runs `keras-metaformer` with `argv` (default: `sys.argv[1:]`); returns the exit status."""
    from keras_metaformer_cli import main as command_line

    return command_line(argv)


if __name__ == "__main__":
    sys.exit(main())
