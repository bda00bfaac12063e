"""The host's matrix-product peak in float32 and bfloat16: what the benchmark's engines are measured against.

Command:   python recipes/matmul_peak.py [--threads 2]
Hardware:  any CPU; a few seconds.
Result:    one line, e.g. "matrix-product peak, 2 threads: float32 412 GFLOP/s,
           bfloat16 2,480 GFLOP/s (TensorFlow oneDNN; best of 2 shapes)".

The engine is TensorFlow's oneDNN matrix product, switched on explicitly
(`TF_ENABLE_ONEDNN_OPTS=1`: TensorFlow leaves it off on AMD CPUs), because
it uses the full vector width and the bfloat16 units (AVX-512 BF16, AMX):
on a Zen 5 host it gave 464 GFLOP/s in float32 and 797 in bfloat16, more
than XLA, Eigen, PyTorch or NumPy under this machine's
`OPENBLAS_CORETYPE=Haswell`. The shapes are a square product and the
largest of PoolFormer-S12's MLP products (6272 x 320 x 1280: batch 32,
stage 3); the peak is the faster of the two, each the best of 4 runs.
"""

import argparse
import json
import os
import subprocess
import sys
import time

SHAPES = ((4096, 4096, 4096), (6272, 320, 1280))
QUICK_SHAPES = ((512, 512, 512),)  # the benchmark's --smoke: a check that it runs
PRECISIONS = ("float32", "bfloat16")


def measure(threads=2, quick=False):
    """`{"float32": GFLOP/s, "bfloat16": GFLOP/s}`, measured in a fresh process.

    `quick` measures one small product instead, in well under a second.
    """
    shapes = QUICK_SHAPES if quick else SHAPES
    products = [((m, k), (k, n), False, False, precision) for precision in PRECISIONS for m, k, n in shapes]
    samples = iter(onednn_samples(products, threads, repeats=4))
    peaks = {"shapes": len(shapes)}
    for precision in PRECISIONS:
        peaks[precision] = max(2 * m * k * n / min(next(samples)) / 1e9 for m, k, n in shapes)
    return peaks


def onednn_samples(products, threads=2, repeats=4, environment=None):
    """Seconds of `repeats` calls of each product with TensorFlow's oneDNN
    kernel, after one warm-up call, as one list per product.

    Each product is `(shape_a, shape_b, transpose_a, transpose_b, dtype)`,
    as `tf.matmul` takes them. They run in a fresh process, because
    TensorFlow reads `TF_ENABLE_ONEDNN_OPTS` and its thread count once, when
    it starts; `environment` adds variables to that process's.
    """
    environment = dict(os.environ, **(environment or {}), TF_ENABLE_ONEDNN_OPTS="1", TF_CPP_MIN_LOG_LEVEL="3")
    request = json.dumps({"products": products, "threads": threads, "repeats": repeats})
    command = [sys.executable, os.path.abspath(__file__), "--worker", request]
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=1200)
    if result.returncode != 0:
        raise RuntimeError(f"the oneDNN timing process failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.splitlines()[-1])


def _samples_here(request):
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(request["threads"])
    tf.config.threading.set_inter_op_parallelism_threads(1)
    samples = []
    for shape_a, shape_b, transpose_a, transpose_b, dtype in request["products"]:
        a = tf.cast(tf.random.stateless_uniform(shape_a, (0, 0)), dtype)
        b = tf.cast(tf.random.stateless_uniform(shape_b, (0, 1)), dtype)
        # One element of the product leaves the function, so that copying
        # the product out does not count.
        product = tf.function(
            lambda a, b, ta=transpose_a, tb=transpose_b: tf.matmul(a, b, transpose_a=ta, transpose_b=tb)[:1, :1]
        )
        product(a, b).numpy()
        seconds = []
        for _ in range(request["repeats"]):
            start = time.perf_counter()
            product(a, b).numpy()
            seconds.append(time.perf_counter() - start)
        samples.append(seconds)
    return samples


def describe(peaks, threads):
    shapes = f"{peaks['shapes']} shape" + "s" * (peaks["shapes"] > 1)
    return (
        f"matrix-product peak, {threads} threads: float32 {peaks['float32']:,.0f} GFLOP/s, "
        f"bfloat16 {peaks['bfloat16']:,.0f} GFLOP/s (TensorFlow oneDNN; best of {shapes})"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="one small product (a check that it runs)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.worker:
        print(json.dumps(_samples_here(json.loads(options.worker))))
    else:
        print(describe(measure(options.threads, options.quick), options.threads))


if __name__ == "__main__":
    main()
