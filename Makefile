# Quick start without a ROS install: `make demo`, `make test`.
# Both create or reuse .venv through `make setup`: ROS 2 Jazzy wheels from PyPI, CPU torch and the tools.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-stamp

ROS_WHEELS := "ros-jazzy-rclpy[fastrtps]" ros-jazzy-sensor-msgs ros-jazzy-diagnostic-msgs ros-jazzy-std-msgs
# torch==2.13.0 resolves to the CPU wheel here; a plain `torch` would pull gigabytes of CUDA packages.
PY_DEPS    := torch==2.13.0 opencv-python-headless numpy pyyaml rosbags mcap-ros2-support tqdm imageio \
              matplotlib onnx onnxruntime pillow pytest ruff \
              cityscapesscripts av

.PHONY: setup test lint demo bench clean

setup: $(STAMP)

$(STAMP): setup.py Makefile
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || \
	  { echo "error: Python 3.10+ is required (found $$($(PYTHON) --version))"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(ROS_WHEELS) $(PY_DEPS)
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

test: setup
	$(VENV)/bin/ruff check vidseg_ros test launch setup.py
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check vidseg_ros test launch setup.py
	$(VENV)/bin/ruff format --check vidseg_ros test launch setup.py

demo: setup
	$(VENV)/bin/vidseg demo --out demo_out

bench: setup
	$(VENV)/bin/vidseg bench --json demo_out/bench.json

clean:
	rm -rf $(VENV) build install log demo_out .pytest_cache

# ---- Reproduce the shipped checkpoints and the README's results table (CPU, about 50 min on 2 cores) ----
BAGS       := out/bags
# The same scenes as H.264 video (libx264, GOP 12, no B-frames) on /camera/image_raw/h264.
H264       := out/bags_h264
H264_TOPIC := --image-topic /camera/image_raw/h264
CKPT       := out/ckpt
TRAIN_BAGS := $(foreach s,1 2 3 4 5 6 7 8,--bag $(BAGS)/train_s$(s))
TEST_BAGS  := $(foreach s,101 102 103,--bag $(BAGS)/test_s$(s))
#: Six held-out bags (`heldout6` writes 104-106) for the TDNet comparisons.
TEST6_BAGS := $(foreach s,101 102 103 104 105 106,--bag $(BAGS)/test_s$(s))
TRAIN      := $(VENV)/bin/vidseg train $(TRAIN_BAGS) --batch 8 --seed 0 --threads 1
TRAIN_SEED := $(VENV)/bin/vidseg train $(TRAIN_BAGS) --batch 8 --threads 1 --seed
#: The per-frame fine-tuning of 300 steps after a stage 1.
PF_FT      := --method perframe --steps 300 --lr 2e-4
#: One TDNet sub-network's architecture (shallow MobileNetV2 x0.25) in stage 1; the decoder's width follows.
SHALLOW_S1 := --method perframe --backbone mobilenetv2_shallow --width-mult 0.25 --steps 1600 --decoder-channels
TRAIN_H264 := $(VENV)/bin/vidseg train $(foreach s,1 2 3 4 5 6 7 8,--bag $(H264)/train_s$(s)) $(H264_TOPIC) --batch 8 --seed 0 --threads 1

.PHONY: bags train results codec
bags: setup
	for s in 1 2 3 4 5 6 7 8; do test -e $(BAGS)/train_s$$s || $(VENV)/bin/vidseg synth --seed $$s --frames 80 --out $(BAGS)/train_s$$s; done
	for s in 101 102 103; do test -e $(BAGS)/test_s$$s || $(VENV)/bin/vidseg synth --seed $$s --frames 60 --out $(BAGS)/test_s$$s; done
	for s in 1 2 3 4 5 6 7 8; do test -e $(H264)/train_s$$s || $(VENV)/bin/vidseg synth --seed $$s --frames 80 --codec h264 --out $(H264)/train_s$$s; done
	for s in 101 102 103; do test -e $(H264)/test_s$$s || $(VENV)/bin/vidseg synth --seed $$s --frames 60 --codec h264 --out $(H264)/test_s$$s; done

# Stage 1: the image model. Then each method gets the same 300 further steps from it (per-frame: plain fine-tuning).
# The shipped stage 1 ran with --threads 2 (same seed), so a rerun is another sample, not a copy: the README's
# TDNet section (`make eqcost`) shows how far the models after it moved.
train: bags
	$(TRAIN) --method perframe --out $(CKPT)/perframe_s1.pt --steps 1600
	$(TRAIN) $(PF_FT) --out $(CKPT)/perframe_mobilenetv2_synth.pt --init $(CKPT)/perframe_s1.pt
	$(TRAIN) --method netwarp --out $(CKPT)/netwarp_mobilenetv2_synth.pt --init $(CKPT)/perframe_s1.pt --steps 300
	$(TRAIN) --method netwarp --netwarp-layers c5,p2 --out $(CKPT)/netwarp_c5p2_mobilenetv2_synth.pt --init $(CKPT)/perframe_s1.pt --steps 300
	$(TRAIN) --method twnet --warp-layer 3 --out $(CKPT)/twnet_mobilenetv2_synth.pt --init $(CKPT)/perframe_s1.pt --steps 300
	$(TRAIN) --method twnet --warp-layer 3 --no-correction --out $(CKPT)/twnet_warponly_mobilenetv2_synth.pt --init $(CKPT)/perframe_s1.pt --steps 300
	$(TRAIN) --method twnet --warp-layer 3 --cfr separable --out $(CKPT)/twnet_separable_mobilenetv2_synth.pt --init $(CKPT)/perframe_s1.pt --steps 300
	$(TRAIN) --method grfp --finetune-static --lr 2e-4 --out $(CKPT)/grfp_mobilenetv2_synth.pt --init $(CKPT)/perframe_s1.pt --steps 300
	$(TRAIN_H264) --method twnet --warp-layer 3 --out $(CKPT)/twnet_codec_mobilenetv2_synth.pt --init $(CKPT)/perframe_s1.pt --steps 300
	$(TRAIN_H264) --method twnet --warp-layer 3 --no-correction --out $(CKPT)/twnet_codec_warponly_mobilenetv2_synth.pt --init $(CKPT)/perframe_s1.pt --steps 300
	# TDNet: a shallow MobileNetV2 x0.25 stage 1 (the same 1600 steps); its sub-networks start from it and distil
	# from the x0.5 stage-1 model. The same stage 1 plus 300 per-frame steps is the per-frame model of equal cost.
	$(TRAIN) $(SHALLOW_S1) 48 --out $(CKPT)/shallow_s1.pt
	$(TRAIN) $(PF_FT) --out $(CKPT)/perframe_shallow_mobilenetv2_synth.pt --init $(CKPT)/shallow_s1.pt
	$(TRAIN) --method tdnet --paths 4 --out $(CKPT)/tdnet4_mobilenetv2_synth.pt --init $(CKPT)/shallow_s1.pt --teacher $(CKPT)/perframe_s1.pt --steps 300
	$(TRAIN) --method tdnet --paths 2 --out $(CKPT)/tdnet2_mobilenetv2_synth.pt --init $(CKPT)/shallow_s1.pt --teacher $(CKPT)/perframe_s1.pt --steps 300
	cp $(CKPT)/*_mobilenetv2_synth.pt vidseg_ros/checkpoints/
	$(MAKE) foreign

# The shipped per-frame model exported to ONNX with a model card, treated as a foreign model: a GRFP unit is
# trained over it with --base (same budget), then both are evaluated on the held-out bags.
FOREIGN := $(CKPT)/foreign/perframe_key_320x240.onnx
.PHONY: foreign
foreign: bags
	$(VENV)/bin/vidseg export --checkpoint vidseg_ros/checkpoints/perframe_mobilenetv2_synth.pt --format onnx --out $(CKPT)/foreign
	$(TRAIN) --method grfp --base $(FOREIGN) --out $(CKPT)/grfp_over_onnx.pt --steps 300
	$(VENV)/bin/vidseg eval $(TEST_BAGS) --threads 1 --json out/results_foreign.json \
	  --checkpoint $(FOREIGN) --checkpoint $(CKPT)/grfp_over_onnx.pt

# The README's results table, from the shipped checkpoints on the held-out bags (seeds 101-103).
results: bags
	$(VENV)/bin/vidseg eval $(TEST_BAGS) --key-distance --label-propagation --threads 1 --json out/results.json --plot out/results.png \
	  $(foreach m,perframe netwarp netwarp_c5p2 twnet twnet_separable twnet_warponly grfp tdnet4 tdnet2 perframe_shallow,--checkpoint vidseg_ros/checkpoints/$(m)_mobilenetv2_synth.pt)

# The TDNet comparison over training seeds: its four recipes again with --seed 1 and 2 (the stage-1 models are
# shared; run `make train` first), evaluated with the shipped seed-0 checkpoints on six held-out bags (seeds
# 101-106). About 40 min.
SEEDS := out/seeds
.PHONY: heldout6 seeds
heldout6: bags
	for s in 104 105 106; do test -e $(BAGS)/test_s$$s || $(VENV)/bin/vidseg synth --seed $$s --frames 60 --out $(BAGS)/test_s$$s; done

seeds: heldout6
	for sd in 1 2; do \
	  $(TRAIN_SEED) $$sd $(PF_FT) --out $(SEEDS)/perframe_seed$$sd.pt --init $(CKPT)/perframe_s1.pt && \
	  $(TRAIN_SEED) $$sd $(PF_FT) --out $(SEEDS)/perframe_shallow_seed$$sd.pt --init $(CKPT)/shallow_s1.pt && \
	  $(TRAIN_SEED) $$sd --method tdnet --paths 4 --out $(SEEDS)/td4_seed$$sd.pt --init $(CKPT)/shallow_s1.pt --teacher $(CKPT)/perframe_s1.pt --steps 300 && \
	  $(TRAIN_SEED) $$sd --method tdnet --paths 2 --out $(SEEDS)/td2_seed$$sd.pt --init $(CKPT)/shallow_s1.pt --teacher $(CKPT)/perframe_s1.pt --steps 300 \
	  || exit 1; done
	$(VENV)/bin/vidseg eval $(TEST6_BAGS) --threads 1 --json $(SEEDS)/eval_seeds.json \
	  $(foreach m,perframe tdnet4 tdnet2 perframe_shallow,--checkpoint vidseg_ros/checkpoints/$(m)_mobilenetv2_synth.pt) \
	  $(foreach m,perframe td4 td2 perframe_shallow,$(foreach sd,1 2,--checkpoint $(SEEDS)/$(m)_seed$(sd).pt))

# TDNet against per-frame models of about its cost: one TDNet sub-network's backbone (shallow MobileNetV2 x0.25)
# with a wider decoder, 80 or 96 channels, each trained like the shipped models: a stage 1 of 1600 steps, then 300
# per-frame steps (seeds 0-2), and a second stage 1 (seed 1) with 300 steps after it. The shipped recipes run
# again from their two stage 1s trained again (`make train`'s commands, into $(EQCOST)): a second stage-1 sample
# beside the shipped checkpoints. One evaluation of all of them on six held-out bags (seeds 101-106). About
# 2 h 45 min (one run at a time, one thread).
EQCOST := out/eqcost
.PHONY: eqcost
eqcost: heldout6
	for d in 80 96; do for s1 in 0 1; do \
	  $(TRAIN_SEED) $$s1 $(SHALLOW_S1) $$d --out $(EQCOST)/stage1_d$${d}_seed$$s1.pt || exit 1; done; \
	  for sd in 0 1 2; do $(TRAIN_SEED) $$sd $(PF_FT) --init $(EQCOST)/stage1_d$${d}_seed0.pt --out $(EQCOST)/d$${d}_seed$$sd.pt \
	    || exit 1; done; \
	  $(TRAIN) $(PF_FT) --init $(EQCOST)/stage1_d$${d}_seed1.pt --out $(EQCOST)/d$${d}_stage1seed1.pt || exit 1; done
	$(TRAIN) --method perframe --out $(EQCOST)/perframe_s1.pt --steps 1600
	$(TRAIN) $(SHALLOW_S1) 48 --out $(EQCOST)/shallow_s1.pt
	$(TRAIN) $(PF_FT) --init $(EQCOST)/perframe_s1.pt --out $(EQCOST)/perframe_rerun.pt
	$(TRAIN) $(PF_FT) --init $(EQCOST)/shallow_s1.pt --out $(EQCOST)/perframe_shallow_rerun.pt
	for n in 4 2; do $(TRAIN) --method tdnet --paths $$n --out $(EQCOST)/tdnet$${n}_rerun.pt --init $(EQCOST)/shallow_s1.pt \
	  --teacher $(EQCOST)/perframe_s1.pt --steps 300 || exit 1; done
	$(VENV)/bin/vidseg eval $(TEST6_BAGS) --threads 1 --json $(EQCOST)/eval.json \
	  $(foreach m,perframe tdnet4 tdnet2 perframe_shallow,--checkpoint vidseg_ros/checkpoints/$(m)_mobilenetv2_synth.pt) \
	  $(foreach m,perframe tdnet4 tdnet2 perframe_shallow,--checkpoint $(EQCOST)/$(m)_rerun.pt) \
	  $(foreach d,80 96,$(foreach c,seed0 seed1 seed2 stage1seed1,--checkpoint $(EQCOST)/d$(d)_$(c).pt))

# TWNet on codec motion: the held-out scenes as H.264, keyed on their I-frames, codec vectors as flow, decoding
# charged to every method alike; the DIS-trained TWNet runs on the same codec motion for comparison.
codec: bags
	$(VENV)/bin/vidseg eval $(foreach s,101 102 103,--bag $(H264)/test_s$(s)) $(H264_TOPIC) --key-distance --threads 1 \
	  --json out/results_codec.json --plot out/results_codec.png \
	  $(foreach m,perframe twnet_codec twnet_codec_warponly twnet,--checkpoint vidseg_ros/checkpoints/$(m)_mobilenetv2_synth.pt)
