"""Synthetic streets written in the Cityscapes layout at 1024x512: the data of the README's Cityscapes-layout run.

24 train snippets (aachen, bochum, zurich; frames 0-29, labelled 19) and 8 val snippets (frankfurt 000294,
000576, 001016, 001299 sharing sequence 0, as in the real val split; lindau and munster), rendered from
held-apart synthetic seeds (train 0-23, val 101-108). Run from the repo root:

    .venv/bin/python test/data/datasets/make_cityscapes_layout.py out/cs
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from layouts import make_cityscapes  # noqa: E402

root = Path(sys.argv[1] if len(sys.argv) > 1 else "out/cs")
train = [(city, seq, 19) for city in ("aachen", "bochum", "zurich") for seq in range(8)]
make_cityscapes(root, split="train", snippets=train, size=(1024, 512), seed=0)
val = [("frankfurt", 0, n) for n in (294, 576, 1016, 1299)]
val += [("lindau", 0, 19), ("lindau", 1, 19), ("munster", 0, 19), ("munster", 1, 19)]
make_cityscapes(root, split="val", snippets=val, size=(1024, 512), seed=101)
