"""Writes keras_metaformer/assets/imagenet_classes.tsv from timm's data.

timm ships the 1,000 ImageNet-1k synset ids in class-index order and a
synset -> names table (Apache-2.0). The written file has one line per class
index: `synset<TAB>names`.

Command (in an environment with timm; torch is not needed):
    python tests/reference/make_imagenet_classes.py
"""

import importlib.util
import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUTPUT = os.path.join(REPO, "keras_metaformer", "assets", "imagenet_classes.tsv")


def main():
    spec = importlib.util.find_spec("timm")
    info = os.path.join(spec.submodule_search_locations[0], "data", "_info")
    with open(os.path.join(info, "imagenet_synsets.txt")) as f:
        synsets = [line.strip() for line in f if line.strip()]
    names = {}
    with open(os.path.join(info, "imagenet_synset_to_lemma.txt")) as f:
        for line in f:
            synset, _, lemma = line.rstrip("\n").partition("\t")
            names[synset] = lemma
    assert len(synsets) == 1000, len(synsets)
    with open(OUTPUT, "w") as f:
        for synset in synsets:
            f.write(f"{synset}\t{names[synset]}\n")
    print(f"wrote {len(synsets)} classes to {OUTPUT}")


if __name__ == "__main__":
    main()
