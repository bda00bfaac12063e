"""Keep freed memory in the process, for training jobs on a CPU.

glibc's malloc serves every block above 32 MiB with a fresh `mmap` and
unmaps it when freed, so a training step first-touches its whole working
set again: XLA's temporary buffer for a PoolFormer-S12 step at batch 32 is
one 2.4 GB block, about 580k page faults a step on a 2-core CPU. In paired
runs there, steps took 8-31% less time with the memory kept (TensorFlow
and JAX; eager PyTorch pays the same cost).

TensorFlow's own allocator keeps freed memory already; JAX's CPU client
allocates through malloc. So `import keras_metaformer` on the JAX backend
keeps freed memory for the whole process, as TensorFlow does: PoolFormer-S12
training steps at batch 32 on a 2-core AMD EPYC (Zen 5), medians, float32
2,456 -> 1,340 ms, `mixed_bfloat16` 1,263 -> 857 ms; inference at batch 32
in bfloat16 265 -> 227 ms. Set `KERAS_METAFORMER_MALLOC=system` before the
import to leave glibc's malloc as configured, or `retain` to keep freed
memory on the TensorFlow backend too.
"""

import ctypes
import os

# Read once, by `import keras_metaformer` (see `apply_import_default`).
MALLOC_VARIABLE = "KERAS_METAFORMER_MALLOC"
_CHOICES = ("retain", "system")

# mallopt parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


def retain_freed_memory():
    """Tells glibc's malloc to keep freed memory for reuse; returns whether it could.

    The same as starting Python with `MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0
    MALLOC_TRIM_THRESHOLD_=<huge>`: one arena (other arenas serve large
    blocks with `mmap`), no `mmap`, and no trimming, so the process keeps
    its peak memory until it exits. Meant for a training job, not for a
    long-lived server whose memory use varies. Call it before building a
    model or running a step: threads that have already allocated keep their
    own arenas, which still return large blocks (called after building
    PoolFormer-S12 under JAX, it left the page faults unchanged; called
    before, none were left). Where the C library is not glibc (macOS,
    Windows, musl) it changes nothing and returns False. The training
    recipes call it first unless given `--malloc system`.

    Example (not run by the doctests, since it changes the whole process;
    tests/test_malloc.py runs it in a subprocess):

    >>> from keras_metaformer.malloc import retain_freed_memory
    >>> retain_freed_memory()  # doctest: +SKIP
    True
    """
    mallopt = glibc_mallopt()
    if mallopt is None:
        return False
    # mallopt takes an int; glibc reads the threshold as a size_t, so -1 is
    # the largest threshold there is: never trim.
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))
    return all(mallopt(parameter, value) == 1 for parameter, value in settings)


def keeps_freed_memory_on_import(backend):
    """Whether `import keras_metaformer` keeps freed memory on `backend`:
    on JAX, unless `$KERAS_METAFORMER_MALLOC` says `system`; on any backend
    where it says `retain`.
    """
    value = os.environ.get(MALLOC_VARIABLE, "").strip().lower()
    if value and value not in _CHOICES:
        raise ValueError(
            f"{MALLOC_VARIABLE} must be 'retain' (keep freed memory for reuse) or 'system' (leave "
            f"glibc's malloc as configured). Received: {MALLOC_VARIABLE}={value!r}. Unset it for the "
            "default: 'retain' on the JAX backend, 'system' on the others."
        )
    return value == "retain" if value else backend == "jax"


def apply_import_default(backend):
    """Keeps freed memory if `keeps_freed_memory_on_import(backend)`; run by
    `import keras_metaformer`, before any model is built. Returns whether
    this call told malloc to keep freed memory."""
    return keeps_freed_memory_on_import(backend) and retain_freed_memory()


def glibc_mallopt():
    """glibc's `mallopt`, or None where the C library is another one."""
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
        return ctypes.CDLL(None).mallopt
    except (AttributeError, OSError, ValueError):  # no confstr, name or mallopt
        return None
