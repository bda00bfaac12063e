import atexit
import functools
import json
import os
import shutil
import sys
import tempfile

import pytest

# Tests never touch the user's Keras cache, nor the network: downloads go to
# a throwaway KERAS_HOME (one per test process, shared with the subprocesses
# it starts, removed when it exits), and the Hub endpoint points at a closed
# local port unless a test serves weights itself.
os.environ["KERAS_HOME"] = tempfile.mkdtemp(prefix="keras_metaformer_tests_")
atexit.register(shutil.rmtree, os.environ["KERAS_HOME"], ignore_errors=True)
os.environ["HF_ENDPOINT"] = "http://127.0.0.1:9"
# Float32 means float32 on GPUs too. Since Ampere, NVIDIA GPUs round the
# inputs of float32 matrix products and convolutions to TensorFloat-32's 10
# mantissa bits unless told otherwise; on an H100 that put JAX's logits 4e-3
# from timm's, against 1e-4 allowed. Set before any backend is imported, so
# that the scripts the tests start get it too; no effect on a CPU.
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
os.environ.setdefault("NVIDIA_TF32_OVERRIDE", "0")
# XLA compiles every new shape of every JAX program once per process, even a
# weight initializer's random draw (0.3-0.6 s each on a 2-core CPU): building
# ConvFormer-M36 took 17 s, 4 s with these compilations cached. One on-disk
# cache for the run, made by pytest's main process before it starts the
# xdist workers (they inherit the variable), serves the workers and every
# subprocess they start, and goes when the main process exits.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="keras_metaformer_jax_cache_")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# The tests' programs are small and run once, so XLA's compile is most of
# their time: with LLVM's optimisations off it is about half as long (a
# small MetaFormer built in 3.1 s instead of 6.8 s on JAX). XLA's own graph
# passes, which decide fusions and the tests' HLO, still run. The scripts
# the tests start inherit the flag; those that add flags append to it.
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "reference"))

import keras  # noqa: E402

from keras_metaformer.models.variants import FAMILIES  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")

# Per timm architecture: checkpoint keys and shapes at full and reduced size,
# trainable parameter count, and the authors' key of every tensor.
with open(os.path.join(FIXTURES, "timm_keys.json")) as _file:
    TIMM_KEYS = json.load(_file)


def fixture_path(name):
    return os.path.join(FIXTURES, name)


# The first size of each family ("poolformer_s12", "convformer_s18", ...).
# Sizes share every layer and differ in depths and widths only: tests of
# full-size or deep models check every size on TensorFlow and these on JAX,
# where XLA compiles each deep model for tens of seconds on 2 cores.
FIRST_SIZES = frozenset(f"{family}_{next(iter(spec.sizes))}" for family, spec in FAMILIES.items())
ONE_SIZE_ON_JAX = "another size of this family runs on JAX; every size on TensorFlow"


@functools.cache
def full_size_model(arch):
    """A full-size model with random weights, built once per process.

    Only for tests that read the model without changing it.
    """
    from keras_metaformer.models import BUILDERS

    return BUILDERS[arch](weights=None)


@pytest.fixture(autouse=True)
def _temporary_files_under_basetemp(tmp_path_factory, monkeypatch):
    """What a test makes with `tempfile` (the doctests' `mkdtemp()`,
    tensorflow-datasets' metadata folders, which it never removes) goes into
    pytest's own temporary tree, which pytest prunes, instead of /tmp; so
    does what the subprocesses it starts make, through TMPDIR."""
    scratch = str(tmp_path_factory.mktemp("tempfiles"))
    monkeypatch.setattr(tempfile, "tempdir", scratch)
    monkeypatch.setenv("TMPDIR", scratch)


@pytest.fixture(autouse=True)
def _restore_dtype_policy():
    policy = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(policy)


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    """An empty Keras cache for one test."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    return tmp_path


# Scripts the tests run as subprocesses; they read sys.argv at import.
collect_ignore = ["distributed_step.py", "resumable_training.py"]


def pytest_collection_modifyitems(config, items):
    """On JAX, the builders' docstring examples run for the first size of each
    family only. Each builds a full-size model, a check of the variant table
    that does not depend on the backend (the TensorFlow run makes every
    size), and JAX compiles a random draw for every weight's shape first."""
    if keras.backend.backend() == "tensorflow":
        return
    from keras_metaformer.models import BUILDERS

    checked = {BUILDERS[arch].__name__ for arch in FIRST_SIZES}
    prefix = "keras_metaformer/models/builders.py::keras_metaformer.models.builders."
    for item in items:
        if item.nodeid.startswith(prefix) and item.nodeid[len(prefix) :] not in checked:
            # Skipped when run, not by a mark: pytest places a mark's skip on
            # the item's line, which these generated docstrings lack.
            item.runtest = _skip_on_jax


def _skip_on_jax():
    pytest.skip(ONE_SIZE_ON_JAX)
