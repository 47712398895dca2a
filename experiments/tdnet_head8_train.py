"""Experiment (reverted in the next commit): TDNet with its head at stride 8.

    B="$(for s in 1 2 3 4 5 6 7 8; do printf -- '--bag out/bags/train_s%s ' $s; done)"
    python experiments/tdnet_head8_train.py 8 $B --batch 8 --seed 0 --threads 1 --method tdnet --paths 4 \
        --out out/tc/td4_h8.pt --init out/ckpt/shallow_s1.pt --teacher out/ckpt/perframe_s1.pt --steps 300
    (and --paths 2 --out out/tc/td2_h8.pt), then vidseg eval on test_s101..103 with the shipped TD4 and TD2.
"""

import sys

import vidseg_ros.models.tdnet as tdnet

tdnet.DEFAULT_HEAD_STRIDE = int(sys.argv.pop(1))

from vidseg_ros.cli import main  # noqa: E402

sys.exit(main(["train", *sys.argv[1:]]))
