"""ament_python setup for vidseg_ros (also installable with plain pip)."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "vidseg_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    package_data={PACKAGE: ["checkpoints/*.pt"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
    ],
    python_requires=">=3.10",
    install_requires=["setuptools", "numpy", "pyyaml"],
    extras_require={
        # The CLI (synth/train/eval/bench/export) and the demo.
        "tools": ["rosbags>=0.10", "tqdm", "imageio", "pillow"],
        "onnx": ["onnx", "onnxruntime"],
        # TWNet on codec motion: H.264 / MPEG-4 decoding with motion vectors, and libx264 encoding.
        "codec": ["av"],
        # onnxruntime's CUDA and TensorRT execution providers (desktop GPUs; on Jetson use NVIDIA's wheel).
        "ort-gpu": ["onnx", "onnxruntime-gpu"],
        "tensorrt": ["torch-tensorrt"],
    },
    zip_safe=True,
    maintainer="vidseg_ros developers",
    maintainer_email="dev@vidseg.invalid",
    description="Online video semantic segmentation node with temporal feature state (NetWarp, TWNet).",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "seg_node = vidseg_ros.ros.node:main",
            "vidseg = vidseg_ros.cli:main",
        ],
    },
)
