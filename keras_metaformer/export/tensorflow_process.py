"""Exports of models built on JAX: the work runs in a TensorFlow-backend subprocess.

SavedModels, TFLite and ONNX files are TensorFlow graphs, which a JAX-built
model cannot trace. The model is saved as a `.keras` file, which is
backend-independent, and a subprocess with `KERAS_BACKEND=tensorflow` loads
it and writes the export: the same weights, so the same function.
"""

import importlib
import os
import subprocess
import sys

import keras


def custom_modules(model):
    """The modules the TensorFlow-backend subprocess must import to rebuild `model`.

    Layers of Keras and of this package are known there; any other layer's
    class is found by importing the module that defines it (which also runs
    its `register_keras_serializable`). A class defined in `__main__` (a
    script or a notebook) cannot be imported by another process: fail now,
    before anything is written.
    """
    flatten = getattr(model, "_flatten_layers", None)
    layers = list(flatten(include_self=True)) if flatten else [model, *model.layers]
    modules, unreachable = [], []
    for layer in layers:
        cls = type(layer)
        module = cls.__module__
        if module.split(".")[0] in ("keras", "keras_metaformer") or module in modules:
            continue
        loaded = sys.modules.get(module)
        if module == "__main__" or getattr(loaded, "__spec__", None) is None:
            unreachable.append(f"{cls.__qualname__} (layer {layer.name!r}, defined in {module})")
        else:
            modules.append(module)
    if unreachable:
        raise ValueError(
            "On the JAX backend the export runs in a TensorFlow-backend subprocess, which must "
            f"import every custom layer class; it cannot import {', '.join(unreachable)}. Move the "
            "class into a module importable by name (a .py file on sys.path) and register it with "
            "`@keras.saving.register_keras_serializable()`, or export with KERAS_BACKEND=tensorflow."
        )
    return modules


def run_in_tensorflow_process(model, module, scratch, *arguments):
    """Saves `model` into the folder `scratch`, then runs `python -m MODULE MODEL_FILE *ARGUMENTS` on TensorFlow.

    The module's `__main__` rebuilds the model with `load_model`. Raises a
    RuntimeError with the subprocess's error output if it fails.
    """
    model_file = os.path.join(scratch, "model.keras")
    model.save(model_file)
    # The parent's sys.path, so that the subprocess imports the same modules.
    search_path = os.pathsep.join(os.path.abspath(p or os.curdir) for p in sys.path)
    environment = dict(os.environ, KERAS_BACKEND="tensorflow", PYTHONPATH=search_path)
    result = subprocess.run(
        [sys.executable, "-m", module, model_file, *map(str, arguments)],
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode == 0:
        return
    hint = ""
    if "Could not locate" in result.stderr or "Unknown layer" in result.stderr:
        hint = (
            " A custom layer was unknown there: make the module that defines it importable by name "
            "and register the class with `@keras.saving.register_keras_serializable()`, or export "
            "with KERAS_BACKEND=tensorflow."
        )
    raise RuntimeError(
        "Exporting through the TensorFlow backend failed (the model was saved "
        f"as .keras and loaded there).{hint}\n{result.stderr[-3000:]}"
    )


def load_model(model_file, modules=()):
    """In the subprocess: the model `run_in_tensorflow_process` saved, after importing `modules`."""
    import keras_metaformer  # noqa: F401  (registers the layers the file refers to)

    for module in modules:  # the user's layers, registered on import
        importlib.import_module(module)
    return keras.saving.load_model(model_file, compile=False)
