"""Convert an authors' PyTorch checkpoint into a file `weights=<path>` loads.

IdentityFormer and RandFormer weights exist only as the authors' `.pth`
pickles (sail-sg/metaformer), and PoolFormer v1's as `.pth.tar`
(sail-sg/poolformer). This script unpickles one with torch (safely:
`weights_only=True`) and writes its tensors, under the authors' names, to a
`.safetensors` file that loads without torch: the package's loader renames
the authors' keys to timm's. It needs torch and safetensors only, not Keras.

Command:   python recipes/convert_authors_checkpoint.py identityformer_s12.pth identityformer_s12.safetensors
           then: keras_metaformer.IdentityFormerS12(weights="identityformer_s12.safetensors")
Needs:     torch (`pip install torch`) and safetensors; a few seconds on a CPU.
Result:    prints the number of tensors written; loading the file into the
           matching builder checks every key and shape.
"""

import argparse
import sys

import numpy as np


def to_numpy_state(checkpoint):
    """`{key: np.ndarray}` from an unpickled checkpoint (maybe wrapped)."""
    for wrapper in ("state_dict", "model", "state_dict_ema"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(wrapper), dict):
            checkpoint = checkpoint[wrapper]
            break
    state = {}
    for key, value in checkpoint.items():
        key = key[len("module.") :] if key.startswith("module.") else key  # DataParallel
        state[key] = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
    return state


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="the authors' .pth or .pth.tar file")
    parser.add_argument("output", help="the .safetensors file to write")
    args = parser.parse_args(argv)
    if not args.output.endswith(".safetensors"):
        sys.exit("error: the output file name must end in .safetensors")
    try:
        import torch
    except ImportError:
        sys.exit("error: reading a PyTorch pickle needs torch: pip install torch")
    from safetensors.numpy import save_file

    checkpoint = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    state = to_numpy_state(checkpoint)
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, args.output)
    print(f"wrote {len(state)} tensors to {args.output}")


if __name__ == "__main__":
    main()
