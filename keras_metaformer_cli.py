"""The `keras-metaformer` command: predict, export, convert, info.

    keras-metaformer predict cat.jpg dog.png             # top-5 ImageNet classes
    keras-metaformer export poolformer_s12 serving/poolformer_s12 --format saved_model
    keras-metaformer export finetune_output/model.keras s12.tflite --format tflite --quantize float16
    keras-metaformer export poolformer_s12 s12.onnx --format onnx
    keras-metaformer convert poolformer_s12.safetensors s12.weights.h5 --model poolformer_s12
    keras-metaformer info poolformer_s12

MODEL is an architecture name (with `--weights`) or a `.keras` file.
"""

# A module outside the package, on purpose: importing anything under
# `keras_metaformer` imports Keras and so its backend (TensorFlow takes
# seconds and prints log lines). Parsing the arguments, and `--help`, need
# neither; the commands in `keras_metaformer.cli` are imported only once
# the arguments are parsed, after the backends are told to be quiet.

import argparse
import contextlib
import os
import sys

# Set to show the full traceback of an unexpected error (as --verbose does).
TRACEBACK_VARIABLE = "KERAS_METAFORMER_TRACEBACK"
# What installs each module a command may find missing: a backend, export's
# protos (tensorflow-serving-api asks for the full `tensorflow` wheel, which
# would clash with tensorflow-cpu), the ONNX converter, or a dependency
# removed by hand.
INSTALLS = {
    "tensorflow": 'pip install "keras-metaformer[tensorflow-cpu]"',
    "jax": 'pip install "keras-metaformer[jax]"',
    "tensorflow_serving": "pip install --no-deps tensorflow-serving-api",
    "tf2onnx": 'pip install "keras-metaformer[onnx]"',
    "onnx": 'pip install "keras-metaformer[onnx]"',
    "PIL": "pip install pillow",
    "safetensors": "pip install safetensors",
}
# TensorFlow's (and XLA's) C++ logs at or above this level reach stderr:
# 2 drops INFO and WARNING lines (CPU features, oneDNN, the TFLite
# converter's passes) and keeps errors.
QUIET_LOG_LEVEL = "2"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line, like every other failure.

    argparse prints its usage block before the `error:` line; here the line
    points to `--help` instead. Subparsers are made of the same class.
    """

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see `{self.prog} --help`)\n")


def build_parser():
    parser = Parser(
        prog="keras-metaformer",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 1)[1],
    )
    verbose_help = (
        f"show the backend's logs and warnings, and the traceback of an unexpected error "
        f"(set {TRACEBACK_VARIABLE}=1 for the traceback alone)"
    )
    parser.add_argument("--verbose", action="store_true", help=verbose_help)
    # Also accepted after the command; SUPPRESS keeps a flag given before it.
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=verbose_help)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_command(name, summary, run):
        command = commands.add_parser(name, help=summary, parents=[verbose])
        command.set_defaults(run=run)
        return command

    parser.commands = commands.choices  # main() names the command in an unknown-option error
    command = add_command("predict", "top-5 classes of images", "predict")
    command.add_argument("images", nargs="+", metavar="IMAGE")
    command.add_argument("--model", default="poolformer_s12", help="an architecture or a .keras file")
    command.add_argument("--weights", default="imagenet", help="imagenet, a weight tag, or a weights file")
    command.add_argument("--top", type=int, default=5)

    command = add_command("export", "a SavedModel for TF Serving, a .tflite or an .onnx file", "export_command")
    command.add_argument("model", help="an architecture (e.g. poolformer_s12) or a .keras file")
    command.add_argument(
        "--weights", default="imagenet", help="for an architecture: imagenet, a weight tag, none, or a weights file"
    )
    command.add_argument("output", help="saved_model: the base folder; tflite, onnx: the file")
    command.add_argument("--format", choices=("saved_model", "tflite", "onnx"), required=True)
    command.add_argument("--quantize", choices=("float32", "float16", "dynamic", "int8"), default="float32")
    command.add_argument("--calibration-dir", help="int8: a folder of images (class sub-folders)")
    command.add_argument("--version", type=int, default=1, help="saved_model: the version folder")
    command.add_argument("--class-names", help="a text file, one class name per line")
    command.add_argument("--image-size", type=int, help="for an architecture: the input size")

    command = add_command("convert", "a timm or authors' checkpoint to a Keras weights file", "convert")
    command.add_argument("checkpoint", help="a .safetensors or .npz file (timm or authors' key names)")
    command.add_argument("output", help="the .weights.h5 file to write")
    command.add_argument("--model", required=True, help="the architecture, e.g. poolformer_s12")

    command = add_command("info", "parameters, MACs, weight tags and preprocessing", "info")
    command.add_argument("model", help="an architecture (e.g. poolformer_s12) or a .keras file")
    command.add_argument("--image-size", type=int, help="for an architecture: the input size (default 224)")
    return parser


def quiet():
    """Keeps the backends' logs and warnings from the user's terminal.

    Called before Keras imports its backend: TensorFlow (and XLA under JAX)
    read TF_CPP_MIN_LOG_LEVEL when they load, and the TFLite converter's
    own stderr lines follow it too (`keras_metaformer.export.tflite`). A
    level the user set is kept. Python warnings from the backends' and
    Keras' code are ignored; our own still show.
    """
    import warnings

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", QUIET_LOG_LEVEL)
    warnings.filterwarnings("ignore", module=r"(absl|flatbuffers|jax|keras|ml_dtypes|tensorflow)(\.|$)")


@contextlib.contextmanager
def native_stderr_silenced():
    """Sends what native code writes to the process' stderr to /dev/null meanwhile.

    On CPUs where TensorFlow turns oneDNN on (Intel's), TensorFlow 2.21 logs
    that it did while it loads, before its logging reads
    TF_CPP_MIN_LOG_LEVEL, so only the file descriptor can keep it quiet.
    """
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to silence
        yield
        return
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def main(argv=None):
    """Runs the command line; returns the exit status (2 after an `error:` line).

    A usage error (an unknown option, a missing argument, `--top abc`) and
    `--help` exit through `SystemExit`, as argparse does: status 2 after one
    `error:` line, and 0.
    """
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # argparse would blame the top-level parser; name the command
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    if not args.verbose:
        quiet()
    try:
        with contextlib.nullcontext() if args.verbose else native_stderr_silenced():
            from keras_metaformer import cli  # Keras, its backend, and the commands

        getattr(cli, args.run)(args)
    except Exception as error:
        commands = sys.modules.get("keras_metaformer.cli")
        if commands and isinstance(error, commands.CommandError):
            message = str(error)
        elif isinstance(error, ImportError) and missing_module(error):
            message = missing_module(error)
        elif args.verbose or os.environ.get(TRACEBACK_VARIABLE):
            raise
        else:  # anything else: one line, unless a traceback is asked for
            message = (
                f"{type(error).__name__}: {error} (run with --verbose, or set "
                f"{TRACEBACK_VARIABLE}=1, for the traceback)"
            )
    else:
        return 0
    print(f"keras-metaformer {args.command}: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def missing_module(error):
    """What to install for an ImportError of an optional module; None if it is not one."""
    if "pip install" in str(error):  # our own messages already say it
        return str(error)
    module = (error.name or "").split(".")[0]
    if module in INSTALLS:
        return f"this command needs the {module!r} module, which is not installed: `{INSTALLS[module]}`."
    return None


if __name__ == "__main__":
    sys.exit(main())
