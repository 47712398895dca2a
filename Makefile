# Quick start without a ROS install: `make demo`, `make test`.
# Both create or reuse .venv through `make setup`: ROS 2 Jazzy wheels from PyPI, CPU torch and the tools.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-stamp

ROS_WHEELS := "ros-jazzy-rclpy[fastrtps]" ros-jazzy-sensor-msgs ros-jazzy-diagnostic-msgs ros-jazzy-std-msgs
# torch==2.13.0 resolves to the CPU wheel here; a plain `torch` would pull gigabytes of CUDA packages.
PY_DEPS    := torch==2.13.0 opencv-python-headless numpy pyyaml rosbags mcap-ros2-support tqdm imageio \
              matplotlib onnx onnxruntime pytest ruff

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
