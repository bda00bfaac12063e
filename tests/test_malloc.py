import os
import subprocess
import sys

import keras
import pytest

from keras_metaformer import malloc

# Frees a 256 MiB block, then counts the page faults of writing a new one.
# The module is loaded from its file: importing the package would start a
# Keras backend, seconds per process.
MODULE = malloc.__file__
SCRIPT = """
import ctypes, importlib.util, resource, sys
if sys.argv[1] == "import":
    import keras_metaformer
else:
    spec = importlib.util.spec_from_file_location("malloc", sys.argv[2])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if sys.argv[1] == "retain":
        assert module.retain_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 256 << 20
def touch():
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults_of_a_second_block(mode, **environment):
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode, MODULE],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, **environment),
    )
    assert result.returncode == 0, result.stderr
    return int(result.stdout.split()[-1])


@pytest.mark.skipif(malloc.glibc_mallopt() is None, reason="glibc only")
def test_retained_memory_is_reused_without_page_faults():
    unmapped = faults_of_a_second_block("system")
    retained = faults_of_a_second_block("retain")
    # glibc's default maps the block afresh: one fault a page (fewer with
    # transparent huge pages); retained, the first block's pages are reused.
    assert unmapped > 100, unmapped
    assert retained < unmapped / 10, (retained, unmapped)


def test_the_trim_threshold_is_the_largest_size_t(monkeypatch):
    # A training step's temporary buffer can pass 2 GiB, the largest
    # positive int mallopt takes; a block above the threshold would still
    # be returned to the kernel on free. -1 reads as SIZE_MAX in glibc.
    calls = []

    class FakeLibc:
        def mallopt(self, parameter, value):
            calls.append((parameter, value))
            return 1

    monkeypatch.setattr(malloc.os, "confstr", lambda name: "glibc 2.36")
    monkeypatch.setattr(malloc.ctypes, "CDLL", lambda name: FakeLibc())
    assert malloc.retain_freed_memory()
    assert dict(calls) == {malloc._M_TRIM_THRESHOLD: -1, malloc._M_MMAP_MAX: 0, malloc._M_ARENA_MAX: 1}


def test_other_c_libraries_are_left_alone(monkeypatch):
    def no_such_name(name):
        raise ValueError("unrecognized configuration name")

    monkeypatch.setattr(malloc.os, "confstr", no_such_name)
    assert malloc.retain_freed_memory() is False


@pytest.mark.skipif(malloc.glibc_mallopt() is None, reason="glibc only")
@pytest.mark.parametrize("setting", ["", "system", "retain"])
def test_importing_the_package_keeps_freed_memory_on_jax(setting):
    # This run's backend only: the suite runs once per backend.
    backend = keras.backend.backend()
    faults = faults_of_a_second_block("import", KERAS_METAFORMER_MALLOC=setting, KERAS_BACKEND=backend)
    if setting == "retain" or (setting == "" and backend == "jax"):
        assert faults < 100, faults
    else:
        assert faults > 1000, faults


@pytest.mark.parametrize(
    ("backend", "setting", "expected"),
    [
        ("jax", None, True),
        ("tensorflow", None, False),
        ("jax", "system", False),
        ("jax", " System ", False),
        ("tensorflow", "retain", True),
    ],
)
def test_the_import_default_follows_the_backend_and_the_variable(monkeypatch, backend, setting, expected):
    if setting is None:
        monkeypatch.delenv(malloc.MALLOC_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(malloc.MALLOC_VARIABLE, setting)
    assert malloc.keeps_freed_memory_on_import(backend) is expected


def test_an_unknown_setting_is_refused_with_the_choices(monkeypatch):
    monkeypatch.setenv(malloc.MALLOC_VARIABLE, "jemalloc")
    with pytest.raises(ValueError, match=r"Received: KERAS_METAFORMER_MALLOC='jemalloc'.*'retain' on the JAX backend"):
        malloc.keeps_freed_memory_on_import("jax")
