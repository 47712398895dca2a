"""Experiment (reverted in the next commit): TD4 trained with a flow-warped temporal term.

    B="$(for s in 1 2 3 4 5 6 7 8; do printf -- '--bag out/bags/train_s%s ' $s; done)"
    python experiments/tdnet_temporal_train.py W [PREV_KD=True] $B --batch 8 --seed 0 --threads 1 \
        --method tdnet --paths 4 --out out/tc/td4_wW.pt --init out/ckpt/shallow_s1.pt \
        --teacher out/ckpt/perframe_s1.pt --steps 300
    vidseg eval --bag out/bags/test_s101 --bag out/bags/test_s102 --bag out/bags/test_s103 --threads 1 \
        --checkpoint vidseg_ros/checkpoints/tdnet4_mobilenetv2_synth.pt --checkpoint out/tc/td4_wW.pt ...
"""

import sys

import vidseg_ros.training.distill as d

d.TEMPORAL_WEIGHT = float(sys.argv.pop(1))
while len(sys.argv) > 1 and sys.argv[1].startswith("PREV_KD="):
    d.PREV_KD = sys.argv.pop(1).split("=")[1] == "True"

from vidseg_ros.cli import main  # noqa: E402

sys.exit(main(["train", *sys.argv[1:]]))
