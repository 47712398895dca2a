"""Decode cost of every input encoding and of JPEG/PNG CompressedImage payloads (the README and issue notes
quote it). One OpenCV thread, a synthetic street frame, min over repeats. Run from the repo root:

    .venv/bin/python test/core/measure_decode.py
"""

import timeit

import cv2

from vidseg_ros.data.synth import SynthConfig, generate
from vidseg_ros.imgcodec import (
    SUPPORTED_ENCODINGS,
    decode_compressed,
    decode_image,
    encode_compressed,
    encode_image,
)

cv2.setNumThreads(1)
for w, h in ((640, 480), (768, 576)):
    rgb = next(iter(generate(SynthConfig(seed=3, frames=1, width=w, height=h))))[0]
    cells = []
    for enc in SUPPORTED_ENCODINGS:
        data, step = encode_image(rgb, enc)
        args = (enc, w, h, step, data)
        t = min(timeit.repeat(lambda args=args: decode_image(*args), number=20, repeat=5)) / 20
        cells.append(f"{enc} {t * 1e3:.3f}")
    for fmt in ("jpeg", "png"):
        string, payload = encode_compressed(rgb, fmt)
        args = (string, payload)
        t = min(timeit.repeat(lambda args=args: decode_compressed(*args), number=5, repeat=5)) / 5
        cells.append(f"{fmt} ({len(payload) // 1024} KiB) {t * 1e3:.2f}")
    print(f"{w}x{h} decode ms: " + ", ".join(cells))
