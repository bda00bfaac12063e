"""How fast a model could run if it did nothing but its matrix products: the bound behind the benchmark's aims.

Command:   python recipes/product_bound.py [--models poolformer_s12] [--batch 32] [--threads 2]
Hardware:  any CPU; about a minute per model.
Result:    per precision, a table of the model's matrix products (forward, input gradient, weight
           gradient), each timed alone with JAX's XLA and with TensorFlow's oneDNN on this host, and
           the images per second that their sum allows for inference and for a training step.

A batch cannot take less time than its matrix products, so `batch / (sum of their times)` bounds the
throughput of any engine that runs them with that kernel: the XLA column bounds JAX, the oneDNN
column what this host's fastest product engine allows (see `matmul_peak.py`). Everything else a
batch does (norms, pooling, GELU, residuals, the optimizer) only adds to it.

Nothing else should slow the kernels down, so by default both engines run with glibc's malloc told
to keep freed memory (`--malloc retain`, as in the benchmark): otherwise every product's output
above 32 MiB is fresh memory, and its page faults count as product time (PoolFormer-S12's
100352x64x256 float32 product under XLA took 34.0 ms that way and 14.2 ms with the memory kept, on
a 2-core Intel Xeon). `--malloc system` measures them as a process with glibc's defaults runs them
(`KERAS_METAFORMER_MALLOC=system`, since importing keras_metaformer on JAX keeps freed memory).

The products are the MLPs' two layers, the patch embeddings (as gathered patches times the kernel,
the form the layers use under JAX on a CPU) and the head, at the model's shapes. In bfloat16 both
engines get bfloat16 operands; XLA returns float32, as the layers ask it to (rounding it to bfloat16
is left out, so the bound stays a lower one), and oneDNN bfloat16. A training step has
three products per layer: `x @ w`, `dz @ w.T` and `x.T @ dz`, the last in bfloat16 under XLA in
the layers' form, on one operand transposed first (`products._kernel_gradient`). At inference
the XLA time of an MLP layer is the faster of the whole product and the blocks of rows the layer
runs it in (`Mlp._chunk_rows`). Each time is the median of `--repeats` calls after one warm-up; run it with
nothing else on the machine.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmark
import matmul_peak

PRECISIONS = ("float32", "bfloat16")
# (contracting axis of a, contracting axis of b) for each of a layer's products, with a and b
# shaped as that product reads them: x (rows, k), w (k, n), dz (rows, n).
PRODUCTS = {"forward": (1, 0), "input gradient": (1, 1), "weight gradient": (0, 0)}


def model_products(arch, batch, size=224):
    """`[(name, rows, k, n, count)]`: the matrix products of `arch`'s forward pass at `batch`.

    Identical products are listed once, with how many times the model runs them.
    """
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras_metaformer
    from keras_metaformer.layers import MetaFormerBlock
    from keras_metaformer.layers import PatchEmbedding

    model = keras_metaformer.BUILDERS[arch](weights=None, input_shape=(size, size, 3))
    found = {}

    def add(name, rows, k, n):
        key = (name, rows, k, n)
        found[key] = found.get(key, 0) + 1

    for layer in model.layers:
        if isinstance(layer, MetaFormerBlock):
            _, height, width, channels = layer.input.shape
            hidden = layer.mlp.fc1.units
            rows = batch * height * width
            add("mlp fc1", rows, channels, hidden)
            add("mlp fc2", rows, hidden, channels)
        elif isinstance(layer, PatchEmbedding):
            _, height, width, filters = layer.output.shape
            size_k, _, channels, _ = layer.conv.kernel.shape
            add(f"patches {size_k}x{size_k}", batch * height * width, size_k * size_k * channels, filters)
        elif layer.name == "predictions":  # a Dense layer, or the baselines' two-layer MlpHead
            for kernel in (w for w in layer.weights if len(w.shape) == 2):
                add("head", batch, kernel.shape[0], kernel.shape[1])
    return [(name, rows, k, n, count) for (name, rows, k, n), count in found.items()]


def _operands(rows, k, n, product):
    a_axis, b_axis = PRODUCTS[product]
    shapes = {"forward": ((rows, k), (k, n)), "input gradient": ((rows, n), (k, n))}
    return shapes.get(product, ((rows, k), (rows, n))), (a_axis, b_axis)


def xla_times(products, precision, repeats, blocks):
    """Seconds of each product under `jax.jit`, `{(name, rows, k, n, product): s}`."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from keras_metaformer.layers import mlp as mlp_module
    from keras_metaformer.layers import products as products_module

    dtype = jnp.bfloat16 if precision == "bfloat16" else jnp.float32
    rng = np.random.default_rng(0)
    times = {}
    for name, rows, k, n, _ in products:
        for product in PRODUCTS:
            (shape_a, shape_b), axes = _operands(rows, k, n, product)
            a = jnp.asarray(rng.standard_normal(shape_a), dtype)
            b = jnp.asarray(rng.standard_normal(shape_b), dtype)

            def whole(a, b, axes=axes):
                numbers = ((axes[:1], axes[1:]), ((), ()))
                return jax.lax.dot_general(a, b, numbers, preferred_element_type=jnp.float32)

            candidates = [whole]
            if (
                product == "weight gradient"
                and precision == "bfloat16"
                and products_module._transposes_rows_first(rows, k, n)
            ):
                # The layers' form: one operand transposed first (see `products._kernel_gradient`).
                candidates = [products_module._kernel_gradient]
            block = rows // _block_count(rows, n if name == "mlp fc1" else k, mlp_module) if blocks else None
            if product == "forward" and name.startswith("mlp") and block:

                def looped(a, b, block=block):
                    return jax.lax.map(lambda part: whole(part, b), a.reshape(-1, block, a.shape[1]))

                candidates.append(looped)
            times[(name, rows, k, n, product)] = min(_median(jax.jit(fn), (a, b), repeats) for fn in candidates)
    return times


def _block_count(rows, hidden, mlp_module):
    """How many blocks `Mlp` splits `rows` into at inference under XLA on a CPU (1: none)."""
    target = max(1, mlp_module._HIDDEN_BLOCK_SIZE // hidden)
    if rows <= target:
        return 1
    for block in range(target, target // 4, -1):
        if rows % block == 0:
            return rows // block
    return 1


def _median(fn, args, repeats):
    fn(*args).block_until_ready()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args).block_until_ready()
        samples.append(time.perf_counter() - start)
    return sorted(samples)[len(samples) // 2]


def onednn_times(products, precision, threads, repeats, environment=None):
    """The same products with TensorFlow's oneDNN kernel (`matmul_peak.onednn_samples`,
    whose process gets `environment`)."""
    keys, requests = [], []
    for name, rows, k, n, _ in products:
        for product in PRODUCTS:
            (shape_a, shape_b), (a_axis, b_axis) = _operands(rows, k, n, product)
            keys.append((name, rows, k, n, product))
            requests.append((shape_a, shape_b, a_axis == 0, b_axis == 1, precision))
    samples = matmul_peak.onednn_samples(requests, threads, repeats, environment)
    return {key: sorted(seconds)[len(seconds) // 2] for key, seconds in zip(keys, samples)}


def bounds(products, times, batch):
    """`(inference img/s, training img/s)` allowed by the products' times."""
    forward = sum(count * times[(name, rows, k, n, "forward")] for name, rows, k, n, count in products)
    step = sum(count * times[(name, rows, k, n, p)] for name, rows, k, n, count in products for p in PRODUCTS)
    return batch / forward, batch / step


def report(arch, batch, precision, products, engines):
    """Markdown: one row per product, then the totals and the bounds, per engine."""
    names = list(engines)
    lines = [
        f"{arch}, batch {batch}, {precision}: ms per product (GFLOP/s), forward / input gradient / weight gradient",
        "",
        "| product | rows x k x n | count | " + " | ".join(names) + " |",
        "|---|---|---:|" + "---:|" * len(names),
    ]
    for name, rows, k, n, count in products:
        cells = []
        for engine in names:
            parts = []
            for product in PRODUCTS:
                seconds = engines[engine][(name, rows, k, n, product)]
                parts.append(f"{1000 * seconds:.1f} ({2 * rows * k * n / seconds / 1e9:.0f})")
            cells.append(" / ".join(parts))
        lines.append(f"| {name} | {rows}x{k}x{n} | {count} | " + " | ".join(cells) + " |")
    for label, index in (("inference", 0), ("training step", 1)):
        allowed = [f"{bounds(products, engines[engine], batch)[index]:.1f} img/s" for engine in names]
        lines.append(f"| **{label}: at most** | | | " + " | ".join(allowed) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["poolformer_s12"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--malloc",
        choices=("retain", "system"),
        default="retain",
        help="keep freed memory (no page faults on the products' outputs; default), or glibc's defaults",
    )
    args = parser.parse_args(argv)
    # XLA sizes its CPU thread pool from the cores this process may use.
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.threads])
    os.environ["KERAS_BACKEND"] = "jax"
    environment = None
    if args.malloc == "system":
        # Read when keras_metaformer is first imported, which on JAX keeps freed memory otherwise.
        os.environ["KERAS_METAFORMER_MALLOC"] = "system"
    if args.malloc == "retain":
        from keras_metaformer.malloc import retain_freed_memory

        # Before JAX allocates: memory a thread already holds stays in its arena.
        retain_freed_memory()
        environment = benchmark.RETAINING_MALLOC
    for arch in args.models:
        products = model_products(arch, args.batch)
        for precision in args.precisions:
            engines = {
                "XLA (JAX)": xla_times(products, precision, args.repeats, blocks=True),
                "oneDNN (TensorFlow)": onednn_times(products, precision, args.threads, args.repeats, environment),
            }
            print(report(arch, args.batch, precision, products, engines), end="\n\n", flush=True)


if __name__ == "__main__":
    main()
