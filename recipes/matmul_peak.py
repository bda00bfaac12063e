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

    A fresh process, because TensorFlow reads `TF_ENABLE_ONEDNN_OPTS` and its
    thread count once, when it starts.
    """
    environment = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="1", TF_CPP_MIN_LOG_LEVEL="3")
    command = [sys.executable, os.path.abspath(__file__), "--threads", str(threads), "--json"]
    command += ["--quick"] if quick else []
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.splitlines()[-1])


def _measure_here(threads, shapes):
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    peaks = {"shapes": len(shapes)}
    for precision in PRECISIONS:
        rates = []
        for m, k, n in shapes:
            a = tf.cast(tf.random.stateless_uniform((m, k), (0, 0)), precision)
            b = tf.cast(tf.random.stateless_uniform((k, n), (0, 1)), precision)
            # Reduced to a scalar inside the function, so that copying the
            # product out does not count.
            product = tf.function(lambda a, b: tf.reduce_sum(tf.cast(tf.matmul(a, b)[:1, :1], "float32")))
            product(a, b).numpy()
            seconds = []
            for _ in range(4):
                start = time.perf_counter()
                product(a, b).numpy()
                seconds.append(time.perf_counter() - start)
            rates.append(2 * m * k * n / min(seconds) / 1e9)
        peaks[precision] = max(rates)
    return peaks


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
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.json:
        print(json.dumps(_measure_here(options.threads, QUICK_SHAPES if options.quick else SHAPES)))
    else:
        print(describe(measure(options.threads, options.quick), options.threads))


if __name__ == "__main__":
    main()
